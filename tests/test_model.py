"""The GPT model of train/model.py, the summary of train/summary.py and `cli.py model summary`.

Tiny models on CPU: causality for every variant, attention against a loop reference, the
per-token loss, the padded vocabulary, parameter counts against closed-form formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from train.config import LayerSpec, ModelConfig
from train.layers import alibi_bias, alibi_slopes, rope_cache
from train.model import Attention, build_model
from train.summary import build_on_meta, study_count, summarize, width_candidates

V = 61  # not a multiple of 64: the model pads to 64
T = 12
D = 32  # d_model: 4 heads of 8, FFN inner width 128


def tiny(**overrides) -> ModelConfig:
    settings = dict(vocab_size=V, seq_len=T, n_layer=2, n_head=4, d_model=D, rope_features=4)
    settings.update(overrides)
    return ModelConfig(**settings)


def make(**overrides):
    torch.manual_seed(0)
    return build_model(tiny(**overrides)).eval()


# --- causality ----------------------------------------------------------------------------------

POSITION_VARIANTS = {
    "rope_qk": dict(pos="rope", rope_on="qk"),
    "rope_qkv": dict(pos="rope", rope_on="qkv"),
    "rope_vo": dict(pos="rope", rope_on="vo"),
    "alibi": dict(pos="alibi"),
    "learned": dict(pos="learned"),
    "none": dict(pos="none"),
}

SHIFT_VARIANTS = {
    f"{location}_{combine}{'_sigmoid' if sigmoid else ''}": dict(
        shift=(64, 64) if location == "ffn_inner" else (16, 16), shift_location=location,
        shift_combine=combine, shift_sigmoid=sigmoid)
    for location in ("attn", "ffn", "both", "ffn_inner")
    for combine in ("slice", "add", "mult")
    for sigmoid in (False, True)
}
SHIFT_VARIANTS["skip_token"] = dict(shift=(16, 16), shift_offsets=(2, 0))
SHIFT_VARIANTS["three_groups"] = dict(shift=(8, 8, 16))
SHIFT_VARIANTS["inner_three_back"] = dict(shift=(32, 32, 64), shift_offsets=(3, 1, 0), shift_location="ffn_inner")

MIXED_VARIANTS = {
    "every_2nd_alibi_shift": dict(n_layer=4, layers=({"every": 2, "pos": "alibi", "shift": [16, 16]},)),
    "vo_inner_last_half": dict(n_layer=4, layers=(
        {"half": "last", "rope_on": "vo", "shift_location": "ffn_inner", "shift": [64, 64]},
        {"layers": [0], "pos": "none", "ffn_mult": 2.0},
    )),
    "alibi_with_rope_middle": dict(n_layer=4, pos="alibi", layers=(
        {"range": "1:3", "pos": "rope", "rope_on": "qkv", "shift": [8, 8, 16], "shift_combine": "mult",
         "shift_sigmoid": True},
    )),
    "learned_with_rope_and_inner_shift": dict(n_layer=3, pos="learned", norm="rmsnorm", layers=(
        {"layers": [1], "pos": "rope", "rope_on": "vo"},
        {"layers": [2], "ffn_mult": 1.5, "shift": [24, 24], "shift_location": "ffn_inner", "shift_combine": "add"},
    )),
}


def assert_causal(forward, positions=(0, 4, T - 2)):
    """Changing tokens t+1.. leaves the logits at 0..t unchanged, for a few t."""
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, V, (2, T), generator=gen)
    with torch.no_grad():
        base = forward(idx)
        for t in positions:
            changed = idx.clone()
            changed[:, t + 1:] = (idx[:, t + 1:] + torch.randint(1, V, (2, T - t - 1), generator=gen)) % V
            out = forward(changed)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


@pytest.mark.parametrize("name", POSITION_VARIANTS)
def test_causal_for_each_position_encoding(name):
    assert_causal(make(**POSITION_VARIANTS[name]))


@pytest.mark.parametrize("name", SHIFT_VARIANTS)
@pytest.mark.parametrize("pos", ["rope_qkv", "alibi"])
def test_causal_for_each_shift(name, pos):
    assert_causal(make(**POSITION_VARIANTS[pos], **SHIFT_VARIANTS[name]))


@pytest.mark.parametrize("name", MIXED_VARIANTS)
def test_causal_for_mixed_per_layer_configs(name):
    assert_causal(make(**MIXED_VARIANTS[name]))


def test_causality_check_notices_a_leak():
    """The check above can fail: a model run backwards in time sees the future."""
    model = make()
    with pytest.raises(AssertionError):
        assert_causal(lambda idx: model(idx.flip(1)).flip(1))


@pytest.mark.parametrize("location,where", [
    ("attn", ["shift_attn"]), ("ffn", ["shift_ffn"]), ("both", ["shift_attn", "shift_ffn"]),
    ("ffn_inner", ["ffn.shift"]),
])
def test_shift_sits_where_the_spec_says(location, where):
    width = (64, 64) if location == "ffn_inner" else (16, 16)
    block = make(shift=width, shift_location=location).blocks[0]
    present = {"shift_attn": block.shift_attn, "shift_ffn": block.shift_ffn, "ffn.shift": block.ffn.shift}
    assert {k for k, v in present.items() if v is not None} == set(where)


def test_per_layer_specs_reach_their_blocks():
    model = make(**MIXED_VARIANTS["vo_inner_last_half"])
    assert [b.attn.pos for b in model.blocks] == ["none", "rope", "rope", "rope"]
    assert [b.attn.rope_on for b in model.blocks][2:] == ["vo", "vo"]
    assert [b.ffn.fc.out_features for b in model.blocks] == [64, 128, 128, 128]
    assert [b.ffn.shift is not None for b in model.blocks] == [False, False, True, True]


# --- attention against a loop reference ------------------------------------------------------------


def rotation(position: int, n_features: int, base: float, head_dim: int) -> np.ndarray:
    """The (head_dim, head_dim) matrix RoPE applies at `position`: 2-D rotations of pairs (i, i + n/2)."""
    R = np.eye(head_dim)
    half = n_features // 2
    for i in range(half):
        angle = position * base ** (-2 * i / n_features)
        c, s = math.cos(angle), math.sin(angle)
        R[i, i], R[i, i + half], R[i + half, i], R[i + half, i + half] = c, -s, s, c
    return R


def reference_attention(attn: Attention, x: np.ndarray, pos: str, rope_on: str, n_rot: int) -> np.ndarray:
    """Causal attention one query at a time, in float64, with the weights of `attn`."""
    B, T_, C = x.shape
    H = attn.n_head
    hd = C // H
    w_qkv = attn.qkv.weight.detach().double().numpy()
    w_out = attn.proj.weight.detach().double().numpy()
    qkv = x @ w_qkv.T  # (B, T, 3C)
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    slopes = alibi_slopes(H)
    out = np.zeros((B, T_, C))
    for b in range(B):
        for h in range(H):
            cols = slice(h * hd, (h + 1) * hd)
            R = [rotation(p, n_rot, 10000.0, hd) for p in range(T_)]
            qs = [q[b, i, cols] for i in range(T_)]
            ks = [k[b, j, cols] for j in range(T_)]
            vs = [v[b, j, cols] for j in range(T_)]
            if pos == "rope":
                qs = [R[i] @ qs[i] for i in range(T_)]
                ks = [R[j] @ ks[j] for j in range(T_)]
                if rope_on in ("qkv", "vo"):
                    vs = [R[j] @ vs[j] for j in range(T_)]
            for i in range(T_):
                scores = np.array([qs[i] @ ks[j] / math.sqrt(hd) for j in range(i + 1)])
                if pos == "alibi":
                    scores = scores - slopes[h] * np.array([i - j for j in range(i + 1)])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                y = sum(weights[j] * vs[j] for j in range(i + 1))
                if pos == "rope" and rope_on == "vo":
                    y = R[i].T @ y  # rotate back by the query's position
                out[b, i, cols] = y
    return out @ w_out.T


@pytest.mark.parametrize("pos,rope_on", [
    ("rope", "qk"), ("rope", "qkv"), ("rope", "vo"), ("alibi", "qk"), ("none", "qk"),
])
def test_attention_matches_loop_reference(pos, rope_on):
    torch.manual_seed(3)
    spec = LayerSpec(pos=pos, rope_features=4, rope_base=10000.0, rope_on=rope_on, shift=(), shift_offsets=(),
                     shift_location="attn", shift_combine="slice", shift_sigmoid=False, ffn_mult=4.0)
    attn = Attention(d_model=16, n_head=2, spec=spec, seq_len=8, bias=False)
    x = torch.randn(2, 6, 16)
    bias = alibi_bias(2, 8)[:, :6, :6] if pos == "alibi" else None
    with torch.no_grad():
        got = attn(x, bias).numpy()
    want = reference_attention(attn, x.double().numpy(), pos, rope_on, n_rot=4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def shift_rope_positions(model, start: int) -> None:
    """Give every rotary layer the angles of positions start.., as if the sequence began there."""
    for block in model.blocks:
        if block.attn.rotary:
            n = 2 * block.attn.rope_cos.shape[-1]
            block.attn.rope_cos, block.attn.rope_sin = rope_cache(model.seq_len, n, 10000.0, start=start)


@pytest.mark.parametrize("rope_on,relative", [("qk", True), ("vo", True), ("qkv", False)])
def test_rope_variants_relative_or_not(rope_on, relative):
    """Moving every position by 37 leaves qk and VO-RoPE unchanged; values rotated without undoing do change."""
    model = make(pos="rope", rope_on=rope_on, rope_features=8, n_layer=2)
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = model(idx)
        shift_rope_positions(model, 37)
        after = model(idx)
    if relative:
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    else:
        assert not torch.allclose(after, before, rtol=1e-3, atol=1e-3)


# --- loss and vocabulary ----------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_loss_is_per_token_cross_entropy(tie):
    model = make(tie_embeddings=tie)
    gen = torch.Generator().manual_seed(5)
    idx, targets = torch.randint(0, V, (3, T), generator=gen), torch.randint(0, V, (3, T), generator=gen)
    with torch.no_grad():
        logits, loss = model(idx, targets)
    assert logits.shape == (3, T, V) and loss.shape == (3, T) and loss.dtype == torch.float32
    assert torch.equal(model(idx), logits)
    z = logits.double().numpy()
    for b in range(3):
        for t in range(T):
            row = z[b, t]
            nll = -(row[targets[b, t]] - (row.max() + math.log(np.exp(row - row.max()).sum())))
            assert loss[b, t].item() == pytest.approx(nll, rel=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_padded_vocab_is_never_predicted(tie):
    model = make(tie_embeddings=tie)
    assert model.lm_head.out_features == 64 and model.wte.num_embeddings == 64
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        logits, loss = model(idx, idx)
        model.lm_head.weight[V:] = 50.0  # would win every softmax if padded ids were ever scored
        logits_after, loss_after = model(idx, idx)
    assert logits.shape[-1] == V
    torch.testing.assert_close(logits_after, logits)
    torch.testing.assert_close(loss_after, loss)


def test_longer_than_seq_len_is_an_error():
    with pytest.raises(ValueError, match="longer than the model's seq_len"):
        make()(torch.zeros(1, T + 1, dtype=torch.long))


def test_defaults_from_the_data_set_when_unset():
    model = build_on_meta(ModelConfig(n_layer=1, d_model=64, n_head=1))
    assert (model.seq_len, model.vocab_size, model.lm_head.out_features) == (1024, 50257, 50304)


# --- init -----------------------------------------------------------------------------------------


def test_init_weights_as_documented():
    torch.manual_seed(0)
    model = build_model(tiny(n_layer=8, d_model=128, bias=True, vocab_size=1000, seq_len=16))
    std = lambda p: p.detach().std().item()  # noqa: E731
    assert std(model.blocks[0].attn.qkv.weight) == pytest.approx(0.02, rel=0.1)
    assert std(model.blocks[0].ffn.fc.weight) == pytest.approx(0.02, rel=0.1)
    assert std(model.blocks[0].ffn.proj.weight) == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert std(model.blocks[0].attn.proj.weight) == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert std(model.wte.weight[:1000]) == pytest.approx(0.02, rel=0.1)
    assert not model.wte.weight[1000:].any() and not model.lm_head.weight[1000:].any()
    assert not model.blocks[0].attn.qkv.bias.any()
    assert torch.equal(model.blocks[0].norm1.weight, torch.ones(128)) and not model.norm_f.bias.any()


# --- parameter counts -------------------------------------------------------------------------------


def test_parameter_count_untied_no_bias():
    d, L, Vp = D, 2, 64
    model = make()
    # blocks: attention 4d² + FFN 8d² + two LayerNorm gains 2d; final norm d; head Vp·d; table Vp·d
    want_total = L * (12 * d * d + 2 * d) + d + 2 * Vp * d
    assert model.parameter_counts() == {"total": want_total, "embedding": Vp * d, "non_embedding": want_total - Vp * d}


def test_parameter_count_tied_bias_learned_positions():
    d, L, Vp = D, 2, 64
    model = make(tie_embeddings=True, bias=True, pos="learned")
    # with biases a block adds 3d + d (attention) + 4d + d (FFN) + 2d (LayerNorm biases) = 11d
    per_block = 12 * d * d + 2 * d + 11 * d
    want_total = Vp * d + T * d + L * per_block + 2 * d  # tied head adds nothing
    assert model.parameter_counts() == {"total": want_total, "embedding": Vp * d + T * d,
                                        "non_embedding": L * per_block + 2 * d}


def test_parameter_count_rmsnorm_and_per_layer_ffn():
    d, Vp = D, 64
    model = make(norm="rmsnorm", layers=({"layers": [1], "ffn_mult": 2.0},))
    want = (12 * d * d + 2 * d) + (4 * d * d + 2 * d * (2 * d) + 2 * d) + d + Vp * d
    assert model.parameter_counts()["non_embedding"] == want


def test_parameter_count_of_the_study_baseline():
    model = build_on_meta(ModelConfig(vocab_size=50257))
    d, L, Vp = 768, 12, 50304
    assert model.parameter_counts()["non_embedding"] == L * (12 * d * d + 2 * d) + d + d * Vp == 123_587_328
    assert model.parameter_counts()["embedding"] == Vp * d


def test_study_count_gives_the_quoted_128M():
    # The study library's blocks: q, k, v 3·768² (no bias), out 768²+768, FFN 2·768·3072+3072+768,
    # two LayerNorms 4·768 → 7,085,568 each; its classifier: LayerNorm 1,536 + FFN 4,722,432;
    # output 768·50,257 + 50,257 = 38,647,633.
    count = study_count(768, 12, 50257)
    assert count["blocks"] == 12 * 7_085_568
    assert count["classifier"] == 1_536 + 4_722_432
    assert count["output"] == 38_647_633
    assert count["non_embedding"] == 128_398_417  # "128M"


# --- summary and CLI ---------------------------------------------------------------------------------


def test_summary_of_the_baseline_states_the_convention():
    text = summarize(ModelConfig(vocab_size=50257))
    assert "123,587,328" in text and "128,398,417" in text and "128M non-embedding" in text
    assert "blocks.1-11" in text and "same as blocks.0" in text
    assert "1×1024×50257" in text  # logits of the (1, T) input


def test_width_search_picks_the_closest():
    cfg = tiny()
    target = 60_000
    candidates = width_candidates(cfg, target, n_layer=2)
    assert [c.d_model for c in candidates] == [64 * (i + 1) for i in range(len(candidates))]
    assert all(c.n_head == c.d_model // 8 for c in candidates)
    counts = [c.non_embedding for c in candidates]
    assert counts == sorted(counts) and counts[-1] > target
    # each count is what the model of that width really has
    for c in candidates[:2]:
        model = build_on_meta(tiny(d_model=c.d_model, n_head=c.n_head))
        assert c.non_embedding == model.parameter_counts()["non_embedding"]


TINY_TOML = """
[model]
vocab_size = 61
seq_len = 12
n_layer = 3
n_head = 4
d_model = 32
rope_features = 4
shift = [16, 16]

[[model.layers]]
layers = [2]
pos = "alibi"
"""


@pytest.fixture()
def runner_and_config(tmp_path):
    from cli import app

    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return CliRunner(), app, path


def test_cli_model_summary(runner_and_config):
    runner, app, path = runner_and_config
    result = runner.invoke(app, ["model", "summary", "--config", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    counts = build_model(tiny(n_layer=3, shift=(16, 16), layers=({"layers": [2], "pos": "alibi"},))).parameter_counts()
    for key in ("total", "embedding", "non_embedding"):
        assert f"{counts[key]:,}" in out
    assert "TokenShift([16, 16] from t-1,t, slice)" in out
    assert "same as blocks.0" in out
    assert any(line.split()[:2] == ["2", "alibi"] for line in out.splitlines())
    assert "1×12×61" in out


def test_cli_model_summary_with_overrides_and_target(runner_and_config):
    runner, app, path = runner_and_config
    result = runner.invoke(app, ["model", "summary", "--config", str(path), "--set", "model.n_layer=4"])
    assert result.exit_code == 0, result.output
    assert "4 layers" in result.output
    result = runner.invoke(app, ["model", "summary", "--config", str(path), "--target-params", "60K", "--n-layer", "4"])
    assert result.exit_code == 0, result.output
    assert "→" in result.output and "best: --set model.d_model=" in result.output


@pytest.mark.parametrize("args,message", [
    (["--set", "model.n_layr=3"], "model.n_layr"),
    (["--target-params", "lots"], "--target-params"),
    (["--n-layer", "3"], "--n-layer goes with --target-params"),
    (["--target-params", "60K", "--n-layer", "2"], "layer 2 out of range for model.n_layer = 2"),
])
def test_cli_model_summary_bad_input(runner_and_config, args, message):
    runner, app, path = runner_and_config
    result = runner.invoke(app, ["model", "summary", "--config", str(path), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_flops_per_token_formula():
    d, L, Vp = D, 2, 64
    # matmul weights: 12d² per block + the output layer Vp·d (tied or not); attention 12·L·d·T
    for tie in (False, True):
        assert make(tie_embeddings=tie).flops_per_token() == 6 * (L * 12 * d * d + Vp * d) + 12 * L * d * T


def test_forward_traces_as_one_graph():
    """No graph breaks: torch.compile(fullgraph=True) traces a mixed config and gives the same loss."""
    model = make(**MIXED_VARIANTS["alibi_with_rope_middle"])
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(7))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx, idx)[1], model(idx, idx)[1])
    torch._dynamo.reset()


@pytest.mark.parametrize("variant", ["rope_vo", "alibi"])
def test_bf16_autocast_forward_and_backward(variant):
    """Under bf16 autocast (as on the GPU) the loss stays float32 and close to the fp32 loss."""
    model = make(**POSITION_VARIANTS[variant], shift=(16, 16))
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    loss.mean().backward()
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(loss, model(idx, idx)[1], rtol=0, atol=0.05)
