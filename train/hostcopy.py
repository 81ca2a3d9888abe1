"""Get each step's per-token losses off the GPU without ever stalling it.

Step s copies its losses (as float16, the precision the loss table keeps) and a few scalars
into pinned host buffers with `non_blocking=True` and records a CUDA event behind them. The
trainer reads them back one step later, after it has queued step s+1: waiting on step s's event
then costs nothing, since the GPU already has the next step's work. Two buffer slots alternate
between even and odd steps. On CPU the same calls are plain copies.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(eq=False)  # identity, not tensor comparison
class _Slot:
    losses: torch.Tensor | None  # (b, T) float16, pinned on CUDA; None when not recording
    stats: torch.Tensor  # (n_stats,) float32
    event: torch.cuda.Event | None
    step: int = -1
    queued_at: float = 0.0  # perf_counter() when the step's work was queued (on CPU: done)


class DelayedHostCopy:
    """Per step: copy_losses() for each micro-batch, finish_step(), then take() one step later."""

    def __init__(self, rows: int, seq_len: int, n_stats: int, device: torch.device, record: bool):
        cuda = device.type == "cuda"
        self.slots = [
            _Slot(
                losses=torch.empty((rows, seq_len), dtype=torch.float16, pin_memory=cuda) if record else None,
                stats=torch.empty(n_stats, dtype=torch.float32, pin_memory=cuda),
                event=torch.cuda.Event() if cuda else None,
            )
            for _ in range(2)
        ]
        self.pending: deque[_Slot] = deque()

    def copy_losses(self, step: int, start: int, loss: torch.Tensor) -> None:
        """Queue the copy of one micro-batch's losses (b, T) into rows start.. of step's slot."""
        slot = self.slots[step % 2]
        if slot.losses is not None:
            slot.losses[start : start + loss.shape[0]].copy_(loss.detach().to(torch.float16), non_blocking=True)

    def finish_step(self, step: int, stats: torch.Tensor) -> None:
        """Queue the step's scalars and mark the slot complete once the GPU reaches this point."""
        slot = self.slots[step % 2]
        assert slot not in self.pending, "a slot is reused before it was read: take() every step"
        slot.stats.copy_(stats.detach().float(), non_blocking=True)
        if slot.event is not None:
            slot.event.record()
        slot.step = step
        slot.queued_at = time.perf_counter()
        self.pending.append(slot)

    def take(self) -> tuple[int, np.ndarray | None, np.ndarray, float] | None:
        """The oldest finished step: (step, losses (b, T) float16, stats, done_at); None if none pending.

        Blocks only until that step's copies have landed. `losses` is a view of the slot, valid
        until the slot is reused two steps later: consume it (the loss writer copies) before then.
        `done_at` is when the step was complete: the event's completion seen from the host on
        CUDA, the end of the step on CPU (where queued work is done work).
        """
        if not self.pending:
            return None
        slot = self.pending.popleft()
        if slot.event is not None:
            slot.event.synchronize()
            done_at = time.perf_counter()
        else:
            done_at = slot.queued_at
        losses = slot.losses.numpy() if slot.losses is not None else None
        return slot.step, losses, slot.stats.numpy().copy(), done_at

    def __len__(self) -> int:
        return len(self.pending)
