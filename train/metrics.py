"""Training metrics: the metrics.jsonl sink, the progress display, and the FLOP count behind MFU.

MFU (model FLOPs utilisation) = achieved model FLOP/s ÷ the accelerator's peak dense bf16
FLOP/s, with FLOPs per trained token from the PaLM paper's appendix B, as nanoGPT counts them:

    flops_per_token = 6·N + 12·L·d_model·T

N counts the parameters that take part in matrix multiplies (everything except the input
embedding tables; a tied output layer counted once, as the output layer); 6·N is the forward
(2·N) plus backward (4·N) pass; 12·L·d_model·T is attention's QKᵀ and A·V (2 matmuls × 2 FLOPs
× 3 for forward + backward, per layer, over the full T×T square, causal mask not subtracted).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# Peak dense bf16 FLOP/s per GPU (vendor spec sheets, SXM parts, without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
}
PEAK_ENV = "CONFIGAFORMER_PEAK_FLOPS"


def flops_per_token(n_matmul_params: int, n_layer: int, d_model: int, seq_len: int) -> int:
    return 6 * n_matmul_params + 12 * n_layer * d_model * seq_len


def matmul_params(model) -> int:
    """N in 6·N: all parameters but the input embedding tables, plus a tied output layer."""
    counts = model.parameter_counts()
    n = counts["non_embedding"]
    if model.lm_head.weight is model.wte.weight:
        n += model.lm_head.weight.numel()
    return n


def peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s of one device by its name ($CONFIGAFORMER_PEAK_FLOPS overrides); None if unknown."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV])
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return flops
    return None


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl: {"step": s, "train/loss": ...}."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            # a resumed run repeats the steps after its checkpoint: drop their old lines
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] < resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = open(path, "a")

    def log(self, metrics: dict, step: int) -> None:
        self.file.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Progress:
    """A tqdm bar on a terminal; elsewhere (logs, tests) one plain line per logged step."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
            except ImportError:  # the GPU box may have only torch, numpy and pyarrow
                pass

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, step: int, total_steps: int, metrics: dict) -> None:
        if not self.enabled:
            return
        parts = [f"loss {metrics['train/loss']:.4f}", f"{metrics['perf/tokens_per_s']:,.0f} tok/s"]
        if "perf/mfu" in metrics:
            parts.append(f"MFU {100 * metrics['perf/mfu']:.1f}%")
        if self.bar is not None:
            self.bar.set_postfix_str(" | ".join(parts), refresh=False)
        else:
            print(f"step {step + 1}/{total_steps} | " + " | ".join(parts), flush=True)

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
