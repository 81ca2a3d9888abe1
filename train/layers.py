"""Small pure functions the model is built from: RoPE, ALiBi, token shift and RMSNorm.

Each one is a plain function over tensors (no modules, no state), with the shapes it expects in
its docstring, and each is tested against a slow, obvious reference in tests/test_layers.py.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# --- RoPE (rotary position embedding, Su et al. 2021, https://arxiv.org/abs/2104.09864) ----------
#
# Convention: the rotated features are the leading `n` features of each head, paired
# "half-split" style as in GPT-NeoX and lucidrains' rotary code (which the study's library
# copied): feature i is paired with feature i + n/2, and pair i turns by the angle
# position * base^(-2i/n). Features n.. of the head are left as they are.


def rope_cache(seq_len: int, n_features: int, base: float = 10000.0, start: int = 0,
               device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles for positions start .. start + seq_len - 1.

    Returns (cos, sin), each (seq_len, n_features // 2) in float32. Angles are computed in
    float64 so that large positions keep their precision.
    """
    if n_features % 2:
        raise ValueError(f"RoPE rotates pairs of features; got an odd count {n_features}")
    inv_freq = base ** (-torch.arange(0, n_features, 2, dtype=torch.float64, device=device) / n_features)
    positions = torch.arange(start, start + seq_len, dtype=torch.float64, device=device)
    angles = torch.outer(positions, inv_freq)  # (T, n/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the leading 2 * cos.shape[-1] features of each vector in x by its position.

    x: (..., T, D) (usually (B, H, T, D)); cos, sin: (T, n/2) from `rope_cache`.
    Returns a tensor shaped and typed like x. Passing -sin applies the inverse rotation.
    The rotation runs in float32 (cos/sin are float32) and is cast back to x's dtype.
    """
    half = cos.shape[-1]
    x1 = x[..., :half]  # (..., T, n/2)
    x2 = x[..., half:2 * half]  # (..., T, n/2)
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
    return torch.cat((rotated, x[..., 2 * half:]), dim=-1)  # (..., T, D)


# --- ALiBi (Press et al. 2021, https://arxiv.org/abs/2108.12409) --------------------------------


def alibi_slopes(n_head: int) -> list[float]:
    """The per-head slopes of the ALiBi paper's reference code.

    For a power of two n: the geometric sequence starting at 2^(-8/n) with that same ratio
    (8 heads: 1/2, 1/4, ..., 1/256). Otherwise: the slopes for the closest power of two below
    n, then every other slope of the sequence for twice that power, until there are n.
    """
    if n_head < 1:
        raise ValueError(f"ALiBi needs at least one head, got {n_head}")

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_head).is_integer():
        return power_of_2(n_head)
    closest = 2 ** math.floor(math.log2(n_head))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: n_head - closest]


def alibi_bias(n_head: int, seq_len: int, device: torch.device | str | None = None) -> Tensor:
    """The additive attention bias of causal ALiBi, the causal mask folded in.

    Returns (H, T, T) float32: bias[h, i, j] = -slope_h * (i - j) for keys j <= query i,
    and -inf for j > i (the future).
    """
    slopes = torch.tensor(alibi_slopes(n_head), dtype=torch.float32, device=device)  # (H,)
    pos = torch.arange(seq_len, device=device)
    distance = (pos[:, None] - pos[None, :]).float()  # (T, T): i - j
    bias = -slopes[:, None, None] * distance  # (H, T, T)
    return bias.masked_fill(distance < 0, float("-inf"))


# --- token shift ---------------------------------------------------------------------------------


def token_shift(x: Tensor, widths: Sequence[int], offsets: Sequence[int],
                combine: str = "slice", sigmoid: bool = False) -> Tensor:
    """Mix each position's features with features of earlier positions (the study's shift).

    x: (..., T, C). The features are cut into consecutive groups of `widths` (summing to C);
    group g is taken from position t - offsets[g], zero-padded before the sequence start.
    `[384, 384]` with offsets `[1, 0]` replaces the leading 384 features by those of t-1.

    Groups with offset 0 are kept as they are. A shifted group s (with the current token's same
    features c) becomes, by `combine`:
      slice: s          add: c + s          mult: c * s
    with `sigmoid`, s is replaced by sigmoid(s) first (the zero padding becomes 0.5).
    (The study's code also applied sigmoid/add/mult to the offset-0 groups, i.e. x + x and
    x * x on the kept features; here combining touches only the shifted features, as the study's
    write-up describes.) Returns (..., T, C). A few slices, pads and one cat: cheap.
    """
    if len(widths) != len(offsets):
        raise ValueError(f"token shift: {len(widths)} widths but {len(offsets)} offsets")
    if sum(widths) != x.shape[-1]:
        raise ValueError(f"token shift: widths {list(widths)} sum to {sum(widths)}, not {x.shape[-1]}")
    if combine not in ("slice", "add", "mult"):
        raise ValueError(f"token shift: combine must be slice, add or mult, not {combine!r}")
    T = x.shape[-2]
    parts = []
    start = 0
    for width, offset in zip(widths, offsets):
        current = x[..., start:start + width]  # (..., T, w)
        start += width
        if width == 0:
            continue
        if offset == 0:
            parts.append(current)
            continue
        shifted = F.pad(current, (0, 0, offset, 0))[..., :T, :]  # (..., T, w): row t holds t - offset
        if sigmoid:
            shifted = torch.sigmoid(shifted)
        if combine == "slice":
            parts.append(shifted)
        elif combine == "add":
            parts.append(current + shifted)
        else:
            parts.append(current * shifted)
    return torch.cat(parts, dim=-1)  # (..., T, C)


# --- RMSNorm (Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467) ---------------------------


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim, times `weight` if given.

    x: (..., C); weight: (C,). Computed in float32, returned in x's dtype.
    """
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)
