"""The GPT decoder: token embedding, N pre-norm blocks (attention + GELU FFN), final norm, LM head.

Every block reads only its own `LayerSpec` (position encoding, RoPE settings, token shift, FFN
width), resolved once from the config by `ModelConfig.layer_specs`. Choices are plain `if`s on
that spec, decided when the model is built; `forward` has no data-dependent Python branches, so
the model compiles with torch.compile.

    model = build_model(cfg.model)
    logits = model(idx)                 # idx (B, T) int64 -> logits (B, T, vocab_size)
    logits, loss = model(idx, targets)  # loss: per-token cross-entropy in nats, (B, T), float32
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.config import GPT2_VOCAB_SIZE, LayerSpec, ModelConfig, ffn_width
from train.layers import alibi_bias, apply_rope, rms_norm, rope_cache, token_shift

#: Context length when the config leaves it to the data set (seq_len = 0) and none is known.
DEFAULT_SEQ_LEN = 1024

INIT_STD = 0.02


def build_model(cfg: ModelConfig) -> "GPT":
    """The model a `[model]` table describes; seq_len 0 / vocab_size 0 become 1024 / 50,257.

    At train time the trainer fills both in from the data set before calling this.
    """
    cfg = dataclasses.replace(cfg, seq_len=cfg.seq_len or DEFAULT_SEQ_LEN,
                              vocab_size=cfg.vocab_size or GPT2_VOCAB_SIZE)
    return GPT(cfg)


# --- small modules ---------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm with a learned gain (no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, dim: int, bias: bool) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim)
    raise ValueError(f"unknown norm {kind!r} (expected layernorm or rmsnorm)")


class TokenShift(nn.Module):
    """The study's token shift (no parameters); a module so that it shows in model printouts."""

    def __init__(self, widths: tuple[int, ...], offsets: tuple[int, ...], combine: str, sigmoid: bool):
        super().__init__()
        self.widths, self.offsets, self.combine, self.sigmoid = widths, offsets, combine, sigmoid

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        return token_shift(x, self.widths, self.offsets, self.combine, self.sigmoid)

    def extra_repr(self) -> str:
        sigmoid = "+sigmoid" if self.sigmoid else ""
        return f"widths={list(self.widths)}, offsets={list(self.offsets)}, {self.combine}{sigmoid}"


def make_shift(spec: LayerSpec, *locations: str) -> TokenShift | None:
    """The shift of this layer if it sits at one of `locations`, else None."""
    if not spec.shifts or spec.shift_location not in locations:
        return None
    return TokenShift(spec.shift, spec.shift_offsets, spec.shift_combine, spec.shift_sigmoid)


# --- attention -----------------------------------------------------------------------------------


class Attention(nn.Module):
    """Causal multi-head self-attention through F.scaled_dot_product_attention.

    Position encoding from the layer spec:
      rope, rope_on = qk   q and k rotated (standard RoPE)
      rope, rope_on = qkv  q, k and v rotated; the output is not un-rotated (the study's default)
      rope, rope_on = vo   q, k rotated as in qk, v rotated by its own position and the output
                           rotated back by the query's position ("VO-RoPE", Su 2025): the value of
                           key j then reaches query i turned by (j - i), so it stays relative
      alibi                an additive (H, T, T) bias passed in by GPT (the causal mask folded in)
      none                 nothing (NoPE), or learned positions added at the model's input
    Without a bias the call is is_causal=True, which takes the flash-attention path.
    """

    def __init__(self, d_model: int, n_head: int, spec: LayerSpec, seq_len: int, bias: bool):
        super().__init__()
        self.n_head = n_head
        self.pos = spec.pos
        self.rope_on = spec.rope_on
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.rotary = spec.pos == "rope" and spec.rope_features > 0
        if self.rotary:
            cos, sin = rope_cache(seq_len, spec.rope_features, spec.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)  # (seq_len, n/2)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, H, D)
        if self.rotary:
            # One rotation for q and k (and v) together, in the projection's own layout: fewer
            # kernels than rotating each, and the gradient flows back into the projection
            # without a relayout.
            cos, sin = self.rope_cos[:T, None, None], self.rope_sin[:T, None, None]  # (T, 1, 1, n/2)
            if self.rope_on == "qk":
                qkv = torch.cat((apply_rope(qkv[:, :, :2], cos, sin), qkv[:, :, 2:]), dim=2)
            else:
                qkv = apply_rope(qkv, cos, sin)
        q, k, v = qkv.transpose(1, 3).unbind(dim=2)  # 3 × (B, H, T, D)
        if self.pos == "alibi":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.to(q.dtype))
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        if self.rotary and self.rope_on == "vo":
            y = apply_rope(y, self.rope_cos[:T], -self.rope_sin[:T])  # undo by the query's position
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)

    def extra_repr(self) -> str:
        if self.rotary:
            n = 2 * self.rope_cos.shape[-1]
            return f"heads={self.n_head}, pos=rope({n} features/head, on {self.rope_on})"
        return f"heads={self.n_head}, pos={self.pos}"


# --- feed-forward --------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """Linear up to the inner width, GELU, optional token shift of the inner activations, linear down.

    The inner shift (location ffn_inner) sits after the GELU, just before the down projection,
    so the down projection mixes the current token's activations with shifted ones.
    """

    def __init__(self, d_model: int, inner: int, bias: bool, inner_shift: TokenShift | None):
        super().__init__()
        self.fc = nn.Linear(d_model, inner, bias=bias)
        self.act = nn.GELU()
        self.shift = inner_shift
        self.proj = nn.Linear(inner, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        h = self.act(self.fc(x))  # (B, T, inner)
        if self.shift is not None:
            h = self.shift(h)
        return self.proj(h)


# --- block and model -----------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm block: x + attn(shift?(norm(x))), then x + ffn(shift?(norm(x)))."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        d = cfg.d_model
        self.norm1 = make_norm(cfg.norm, d, cfg.bias)
        self.shift_attn = make_shift(spec, "attn", "both")  # after the pre-norm, before attention
        self.attn = Attention(d, cfg.n_head, spec, cfg.seq_len, cfg.bias)
        self.norm2 = make_norm(cfg.norm, d, cfg.bias)
        self.shift_ffn = make_shift(spec, "ffn", "both")  # after the second pre-norm, before the FFN
        self.ffn = FeedForward(d, ffn_width(d, spec.ffn_mult), cfg.bias, make_shift(spec, "ffn_inner"))

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:  # (B, T, C)
        h = self.norm1(x)
        if self.shift_attn is not None:
            h = self.shift_attn(h)
        x = x + self.attn(h, attn_bias)
        h = self.norm2(x)
        if self.shift_ffn is not None:
            h = self.shift_ffn(h)
        return x + self.ffn(h)


class GPT(nn.Module):
    """The decoder. Build it with `build_model(cfg.model)`, which fills in seq_len and vocab_size."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.seq_len or not cfg.vocab_size:
            raise ValueError("GPT needs seq_len and vocab_size; build_model() fills in the defaults")
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.seq_len = cfg.seq_len
        self.specs = cfg.layer_specs
        padded = cfg.padded_vocab_size  # a multiple of 64: faster matmuls; extra ids never predicted

        self.wte = nn.Embedding(padded, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.pos == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg, spec) for spec in self.specs)
        self.norm_f = make_norm(cfg.norm, cfg.d_model, cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, padded, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        # ALiBi's bias depends only on the head count, so all ALiBi layers share one table, built
        # once for seq_len and sliced to (H, T, T) per forward.
        if any(spec.pos == "alibi" for spec in self.specs):
            self.register_buffer("alibi_bias", alibi_bias(cfg.n_head, cfg.seq_len), persistent=False)
        else:
            self.register_buffer("alibi_bias", None)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (GPT-2's scheme; draws from the global torch RNG).

        - token embedding `wte`: N(0, 0.02); the rows of padded ids (vocab_size..) are zero
        - learned positions `wpe`: N(0, 0.02)
        - every Linear weight: N(0, 0.02), except the two that write into the residual stream
          (`attn.proj`, `ffn.proj`): N(0, 0.02 / sqrt(2 * n_layer)), so the residual's variance
          does not grow with depth (GPT-2 paper, section 2.3)
        - every Linear bias (with bias = true): 0
        - LayerNorm / RMSNorm gains: 1; LayerNorm biases: 0
        - `lm_head`: tied, it is `wte`; untied, N(0, 0.02) with the padded rows zero
        """
        residual_std = INIT_STD / math.sqrt(2 * len(self.blocks))
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith(("attn.proj", "ffn.proj")) else INIT_STD
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        self.wte.weight[self.vocab_size:].zero_()
        self.lm_head.weight[self.vocab_size:].zero_()

    def forward(self, idx: Tensor, targets: Tensor | None = None):
        """idx (B, T) int64 -> logits (B, T, vocab_size); with targets (B, T) also the loss.

        The loss is the per-token cross-entropy in nats, shape (B, T), computed in float32
        (reduction="none": the trainer records every token's loss and takes the mean itself).
        """
        B, T = idx.shape
        if T > self.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than the model's seq_len {self.seq_len}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))  # (T, C) broadcast over the batch
        attn_bias = self.alibi_bias[:, :T, :T] if self.alibi_bias is not None else None  # (H, T, T)
        for block in self.blocks:
            x = block(x, attn_bias)
        x = self.norm_f(x)
        logits = self.lm_head(x)[..., : self.vocab_size]  # (B, T, V): padded ids sliced off, never predicted
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().reshape(B * T, self.vocab_size), targets.reshape(B * T),
                               reduction="none")
        return logits, loss.view(B, T)

    def parameter_counts(self) -> dict[str, int]:
        """total, embedding (input token table incl. padded rows + learned positions) and the rest.

        An untied output layer counts as non-embedding (as in the study's count); a tied one is the
        input embedding and is counted once.
        """
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        embedding = self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding}

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), for MFU: the PaLM paper's appendix B count.

        6 × (weights of every matmul, the output layer included, tied or not) + 12 × n_layer ×
        d_model × seq_len for attention scores and their weighted sum (causality not discounted).
        """
        matmul_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * matmul_weights + 12 * len(self.blocks) * self.cfg.d_model * self.seq_len
