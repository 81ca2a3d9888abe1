"""Which sequences each rank trains on at each step, and turning them into tensors.

One pass over the data set in a seed-determined order: `order` is a permutation of the data
set's rows, cut to a whole number of global batches, and saved in the run folder (order.npy).
Optimizer step `s` trains the global batch `order[s*B : (s+1)*B]`; rank `r` of `W` takes the
contiguous `B/W` slice `r`. So the global batch of a step never depends on the number of
ranks, and a resumed run (even with another rank count) trains every remaining row once.
"""

from __future__ import annotations

import numpy as np
import torch


def data_order(n_sequences: int, n_steps: int, batch_size: int, seed: int) -> np.ndarray:
    """The rows trained on, in training order: (n_steps * batch_size,) int64."""
    needed = n_steps * batch_size
    if needed > n_sequences:
        raise ValueError(f"{n_steps} steps of {batch_size} sequences need {needed} rows; the data set has {n_sequences}")
    return np.random.default_rng(seed).permutation(n_sequences)[:needed].astype(np.int64)


def rank_rows(order: np.ndarray, step: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Rows that `rank` trains on at optimizer step `step`: (batch_size // world_size,) int64."""
    local = batch_size // world_size
    start = step * batch_size + rank * local
    return order[start : start + local]


def load_rows(tokens: np.ndarray, rows: np.ndarray, device: torch.device) -> tuple[np.ndarray, torch.Tensor]:
    """Read `rows` of tokens.bin; returns the host copy (for the loss writer) and the device tensor.

    Host: (b, T+1) in the data set's dtype. Device: (b, T+1) int64, copied from pinned memory
    without blocking on CUDA, so reading the next step's batch overlaps the GPU's work.
    """
    host = np.ascontiguousarray(tokens[rows])  # (b, T+1): a fancy index copies out of the memmap
    batch = torch.from_numpy(host.astype(np.int64))
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    return host, batch
