"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

A pure function of the step, so a resumed run needs only the step to continue the schedule.
"""

from __future__ import annotations

import math

from train.config import OptimConfig


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    """Warmup length in optimizer steps: warmup_frac of the run, rounded."""
    return round(cfg.warmup_frac * total_steps)


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of a run of `total_steps` steps.

    Warmup rises linearly to the peak so that step warmup-1 trains at the full lr; the cosine
    then falls from the peak at step `warmup` to `min_lr_ratio × lr` at the last step.
    """
    warmup = warmup_steps(cfg, total_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    decay_steps = total_steps - 1 - warmup
    if decay_steps <= 0:
        return cfg.lr
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)
