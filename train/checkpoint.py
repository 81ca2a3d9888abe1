"""Checkpoints: `runs/<run>/checkpoints/step-<N>.pt`, written atomically (temp file, then rename).

A checkpoint named step-N holds the state after N optimizer steps (the next step to run is N):
model, optimizer, schedule position, RNG states and data position. The two newest are kept, so
a crash while writing one always leaves a complete one behind.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

KEEP = 2
NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(folder: Path, step: int, state: dict) -> Path:
    """Write `state` as step-<step>.pt atomically, then drop all but the newest KEEP."""
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)
    temp = folder / f".{final.name}.{os.getpid()}.tmp"
    with open(temp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, final)
    _fsync_dir(folder)
    for _, old in list_checkpoints(folder)[:-KEEP]:
        old.unlink(missing_ok=True)
    for leftover in folder.glob(".step-*.tmp"):  # from a process killed mid-write
        if leftover != temp:
            leftover.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Path) -> dict:
    # weights_only=False: the state holds RNG states (numpy arrays, Python tuples) we wrote ourselves
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a crash right after must not bring the old name back)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
