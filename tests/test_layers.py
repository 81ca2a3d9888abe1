"""The small pure functions of train/layers.py against slow, obvious references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from train.layers import alibi_bias, alibi_slopes, apply_rope, rms_norm, rope_cache, token_shift

# --- RoPE ----------------------------------------------------------------------------------------


def naive_rope(x: np.ndarray, n_features: int, base: float, start: int = 0) -> np.ndarray:
    """Rotate each (feature i, feature i + n/2) pair of the leading n features, one position at a time.

    x: (..., T, D). Pair i at position p turns by p * base^(-2i/n) with the 2-D rotation
    [[cos, -sin], [sin, cos]].
    """
    out = x.astype(np.float64).copy()
    half = n_features // 2
    T = x.shape[-2]
    for t in range(T):
        p = start + t
        for i in range(half):
            angle = p * base ** (-2 * i / n_features)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[..., t, i].astype(np.float64), x[..., t, i + half].astype(np.float64)
            out[..., t, i] = c * a - s * b
            out[..., t, i + half] = s * a + c * b
    return out


@pytest.mark.parametrize("n_features,base,start", [(4, 10000.0, 0), (8, 10000.0, 0), (2, 500.0, 3), (6, 10000.0, 40)])
def test_rope_matches_per_position_rotation(n_features, base, start):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8)  # (B, H, T, D)
    cos, sin = rope_cache(7, n_features, base, start=start)
    got = apply_rope(x, cos, sin)
    want = naive_rope(x.numpy(), n_features, base, start)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    # the features past n are untouched
    assert torch.equal(got[..., n_features:], x[..., n_features:])


def test_rope_cache_shape_and_dtype():
    cos, sin = rope_cache(11, 16)
    assert cos.shape == sin.shape == (11, 8)
    assert cos.dtype == torch.float32
    assert torch.allclose(cos[0], torch.ones(8)) and torch.allclose(sin[0], torch.zeros(8))


def test_rope_rejects_odd_feature_count():
    with pytest.raises(ValueError, match="odd"):
        rope_cache(4, 3)


def test_rope_inverse_undoes_rotation():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 9, 16)
    cos, sin = rope_cache(9, 8)
    back = apply_rope(apply_rope(x, cos, sin), cos, -sin)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)


def test_rope_keeps_dtype():
    x = torch.randn(1, 1, 4, 8, dtype=torch.bfloat16)
    cos, sin = rope_cache(4, 4)
    assert apply_rope(x, cos, sin).dtype == torch.bfloat16


def test_rope_scores_depend_only_on_relative_offset():
    """q_m · k_n after rotation equals q_{m+s} · k_{n+s} for every shift s."""
    torch.manual_seed(2)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    n_pos = 60
    cos, sin = rope_cache(n_pos, 8)
    # the same q and k placed at every position: (T, D)
    qs = apply_rope(q.expand(n_pos, 16).clone(), cos.double(), sin.double())
    ks = apply_rope(k.expand(n_pos, 16).clone(), cos.double(), sin.double())
    for m, n in [(3, 1), (10, 10), (5, 9), (20, 0)]:
        reference = qs[m] @ ks[n]
        for s in (1, 7, 30):
            torch.testing.assert_close(qs[m + s] @ ks[n + s], reference, rtol=1e-6, atol=1e-6)  # cos, sin are float32
    # and the score does change with the offset (the test would notice a missing rotation)
    assert not torch.isclose(qs[5] @ ks[1], qs[5] @ ks[4])


# --- ALiBi ---------------------------------------------------------------------------------------


def test_alibi_slopes_power_of_two():
    # the paper: for 8 heads the slopes are 1/2, 1/4, ..., 1/256
    assert alibi_slopes(8) == pytest.approx([2.0 ** -(i + 1) for i in range(8)])
    # 16 heads: the geometric sequence starting at 2^(-8/16) = 2^-0.5
    assert alibi_slopes(16) == pytest.approx([2.0 ** (-0.5 * (i + 1)) for i in range(16)])


def test_alibi_slopes_not_power_of_two():
    # 12 heads: the 8-head slopes, then every other 16-head slope (2^-0.5, 2^-1.5, ...) for the other 4
    want = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5]
    assert alibi_slopes(12) == pytest.approx(want)
    # 6 heads: the 4-head slopes 1/4, 1/16, 1/64, 1/256, then 1/2 and 1/8 from the 8-head ones
    assert alibi_slopes(6) == pytest.approx([1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8])


def test_alibi_bias_matches_loops():
    H, T = 3, 6
    slopes = alibi_slopes(H)
    got = alibi_bias(H, T)
    assert got.shape == (H, T, T)
    for h in range(H):
        for i in range(T):
            for j in range(T):
                if j > i:
                    assert got[h, i, j] == float("-inf")
                else:
                    assert got[h, i, j].item() == pytest.approx(-slopes[h] * (i - j))


# --- token shift ---------------------------------------------------------------------------------

X = torch.tensor([[[1.0, 2.0, 3.0, 4.0],
                   [5.0, 6.0, 7.0, 8.0],
                   [9.0, 10.0, 11.0, 12.0]]])  # (B=1, T=3, C=4)


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


@pytest.mark.parametrize("combine,sigmoid,want", [
    ("slice", False, [[0, 0, 3, 4], [1, 2, 7, 8], [5, 6, 11, 12]]),
    ("add", False, [[1, 2, 3, 4], [6, 8, 7, 8], [14, 16, 11, 12]]),
    ("mult", False, [[0, 0, 3, 4], [5, 12, 7, 8], [45, 60, 11, 12]]),
    ("slice", True, [[sig(0), sig(0), 3, 4], [sig(1), sig(2), 7, 8], [sig(5), sig(6), 11, 12]]),
    ("add", True, [[1 + sig(0), 2 + sig(0), 3, 4], [5 + sig(1), 6 + sig(2), 7, 8], [9 + sig(5), 10 + sig(6), 11, 12]]),
    ("mult", True, [[sig(0), 2 * sig(0), 3, 4], [5 * sig(1), 6 * sig(2), 7, 8], [9 * sig(5), 10 * sig(6), 11, 12]]),
])
def test_token_shift_half_by_one(combine, sigmoid, want):
    got = token_shift(X, [2, 2], [1, 0], combine, sigmoid)
    torch.testing.assert_close(got, torch.tensor([want], dtype=torch.float32))


def test_token_shift_skip_a_token():
    # [2, 2] with offsets [2, 0]: the leading two features come from t-2, none from t-1
    got = token_shift(X, [2, 2], [2, 0])
    torch.testing.assert_close(got, torch.tensor([[[0.0, 0, 3, 4], [0, 0, 7, 8], [1, 2, 11, 12]]]))


def test_token_shift_three_groups():
    # the study's [a, b, c]: a features from t-2, b from t-1, c kept from t
    got = token_shift(X, [1, 1, 2], [2, 1, 0])
    torch.testing.assert_close(got, torch.tensor([[[0.0, 0, 3, 4], [0, 2, 7, 8], [1, 6, 11, 12]]]))


def test_token_shift_keeps_batches_apart_and_handles_zero_widths():
    x = torch.stack([X[0], X[0] * 10])  # (2, 3, 4)
    got = token_shift(x, [0, 2, 2], [3, 1, 0])
    torch.testing.assert_close(got[1], token_shift(X, [2, 2], [1, 0])[0] * 10)


def test_token_shift_offset_longer_than_sequence_is_all_padding():
    got = token_shift(X, [2, 2], [5, 0])
    torch.testing.assert_close(got[..., :2], torch.zeros(1, 3, 2))


def test_token_shift_rejects_bad_widths():
    with pytest.raises(ValueError, match="sum to 3, not 4"):
        token_shift(X, [1, 2], [1, 0])


# --- RMSNorm -------------------------------------------------------------------------------------


def test_rms_norm_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 8)).astype(np.float32) * 3
    w = rng.normal(size=8).astype(np.float32)
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=-1, keepdims=True) + 1e-5) * w
    got = rms_norm(torch.from_numpy(x), torch.from_numpy(w), eps=1e-5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    no_weight = rms_norm(torch.from_numpy(x))
    np.testing.assert_allclose(no_weight.numpy(), want / w, rtol=1e-4, atol=1e-5)


def test_rms_norm_keeps_dtype():
    assert rms_norm(torch.randn(2, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16
