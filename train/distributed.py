"""Single process or DDP under torchrun: ranks, devices, and host-side agreement between ranks.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. Gradients go through NCCL on CUDA and gloo on
CPU. Decisions every rank must take together (stop on Ctrl-C, stop on a non-finite loss) go
through a separate gloo group on host tensors, so agreeing on them never syncs the GPU.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    control: object = None  # gloo process group for host-side agreement (None when single)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)

    def sum(self, values: list[float]) -> np.ndarray:
        """Element-wise sum over ranks of a few host numbers (float64)."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.distributed:
            dist.all_reduce(t, group=self.control)
        return t.numpy()


def resolve_device(name: str, ranks: Ranks) -> torch.device:
    """`auto` → CUDA when present, else CPU; under torchrun each rank takes cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device = {name!r} but torch sees no CUDA device (torch {torch.__version__})")
        if ranks.distributed:
            return torch.device("cuda", ranks.local_rank)
        return torch.device(name if ":" in name else "cuda:0")
    if name != "cpu":
        raise ValueError(f"train.device = {name!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def init_ranks(device_name: str) -> tuple[Ranks, torch.device]:
    """Join the process group when started by torchrun; returns the ranks and this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        ranks = Ranks()
        return ranks, resolve_device(device_name, ranks)
    ranks = Ranks(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )
    device = resolve_device(device_name, ranks)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    ranks.control = dist.new_group(backend="gloo", timeout=dt.timedelta(minutes=30)) if backend == "nccl" else dist.group.WORLD
    return ranks, device


def close_ranks(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()
