"""`python cli.py model summary`: what a config builds, printed before any training.

Three parts: each layer's resolved spec (a compact table), the modules with their input and
output shapes for a (1, T) input, and the parameter counts. The model is built on PyTorch's
`meta` device, so even the 768×12 baseline "runs" a 1024-token forward instantly: shapes
propagate, nothing is allocated or computed.

How parameters are counted here: `embedding` is the input token table (its padded rows
included) plus learned positions, if any; `non-embedding` is everything else, an untied output
layer included (a tied one is the token table, counted once).

The study's "128M non-embedding params" (768×12, vocab 50,257) follows the same rule but on
the study library's architecture (antofuller/configaformers, `building_blocks.py`):
  12 blocks × (q, k, v without bias 3·d², attention output d²+d, FFN 8·d²+5·d, 2 LayerNorms 4·d)
      = 12 × 7,085,568                                              =  85,026,816
  + its classifier block: LayerNorm 2·d + a d→4d→d FFN 8·d²+5·d     =   4,723,968
  + its untied, biased output layer d×50,257 + 50,257               =  38,647,633
                                                                      = 128,398,417
leaving out only the input embedding (50,257 × 768 = 38,597,376). Our baseline (no biases, no
classifier FFN, vocab padded to 50,304) has 123,587,328 non-embedding parameters by this rule.
The same rule gives 135,468,113 for the study's 1024×6 model, which its write-up also calls
"128M": that figure was approximate.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from train.config import GPT2_VOCAB_SIZE, ModelConfig, ffn_width
from train.model import GPT, DEFAULT_SEQ_LEN, RMSNorm, TokenShift, build_model

# --- building without memory -------------------------------------------------------------------


def build_on_meta(cfg: ModelConfig) -> GPT:
    """The model on the meta device: real modules and shapes, no storage, no compute."""
    with torch.device("meta"):
        return build_model(cfg)


# --- the study's counting convention -----------------------------------------------------------


def study_count(d_model: int, n_layer: int, vocab_size: int, ffn_dims: list[int] | None = None) -> dict[str, int]:
    """The study library's non-embedding parameter count for a model of this shape.

    Its blocks: LayerNorm (2d) + q, k, v without bias (3d²) + output projection with bias (d²+d),
    then LayerNorm (2d) + FFN with biases (2·d·f + f + d). Its classifier block: LayerNorm (2d) +
    a d→4d→d FFN (8d² + 5d), then the untied, biased output layer (d·V + V).
    """
    d = d_model
    ffn_dims = ffn_dims or [4 * d] * n_layer
    blocks = sum(2 * d + 3 * d * d + d * d + d + 2 * d + 2 * d * f + f + d for f in ffn_dims)
    classifier = 2 * d + 8 * d * d + 5 * d
    output = d * vocab_size + vocab_size
    return {"blocks": blocks, "classifier": classifier, "output": output,
            "non_embedding": blocks + classifier + output, "input_embedding": vocab_size * d}


# --- the summary ---------------------------------------------------------------------------------


def summarize(cfg: ModelConfig) -> str:
    """The whole `model summary` text for one `[model]` table."""
    model = build_on_meta(cfg)
    T = model.seq_len
    header = (f"model: {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads of {cfg.head_dim}, "
              f"{cfg.norm}, {'tied' if cfg.tie_embeddings else 'untied'} head, "
              f"bias {'on' if cfg.bias else 'off'}, input positions: {'learned' if cfg.pos == 'learned' else 'none'}")
    notes = []
    if not cfg.seq_len:
        notes.append(f"seq_len comes from the data set at train time; {DEFAULT_SEQ_LEN} here")
    if not cfg.vocab_size:
        notes.append(f"vocab_size comes from the data set at train time; GPT-2's {GPT2_VOCAB_SIZE:,} here")
    parts = [header] + [f"  ({n})" for n in notes]
    parts += ["", "layers", layer_table(model), ""]
    parts += [f"modules, for a (1, {T}) input", module_table(model, T), ""]
    parts += ["parameters", parameter_report(model)]
    return "\n".join(parts)


def layer_table(model: GPT) -> str:
    """One row per layer: its resolved LayerSpec."""
    rows = [("layer", "pos", "rope", "shift", "offsets", "location", "combine", "ffn")]
    for i, spec in enumerate(model.specs):
        rope = "-"
        if spec.pos == "rope":
            rope = f"{spec.rope_features}/{model.cfg.head_dim} on {spec.rope_on}, base {spec.rope_base:g}"
        if spec.shifts:
            shift, offsets, location = _list(spec.shift), _list(spec.shift_offsets), spec.shift_location
            combine = spec.shift_combine + ("+sigmoid" if spec.shift_sigmoid else "")
        else:
            shift = offsets = location = combine = "-"
        ffn = f"{ffn_width(model.cfg.d_model, spec.ffn_mult)} ({spec.ffn_mult:g}×)"
        rows.append((str(i), spec.pos, rope, shift, offsets, location, combine, ffn))
    return _table(rows, indent=2)


def module_table(model: GPT, T: int) -> str:
    """The module tree with input/output shapes from one forward pass of a (1, T) input.

    Consecutive blocks with the same spec are shown once (their layout and shapes are identical).
    """
    shapes: dict[str, tuple[str, str]] = {}
    names = {module: name for name, module in model.named_modules()}

    def record(module, args, output):
        first = args[0] if args else None
        out = output[0] if isinstance(output, tuple) else output
        shapes[names[module]] = (_shape(first), _shape(out))

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, T, dtype=torch.long, device=device))
    finally:
        for hook in hooks:
            hook.remove()

    rows = [("module", "kind", "input", "output", "params")]
    rows.append(("GPT", "", *shapes[""], _short(sum(p.numel() for p in model.parameters()))))
    copies = _same_blocks(model)
    for top_name, top in model.named_children():
        if top_name != "blocks":
            rows += _subtree_rows(top_name, top, 1, shapes, tied=model.cfg.tie_embeddings)
            continue
        for k, block in enumerate(top):
            if any(k in later for later in copies.values()):
                continue  # listed as a copy under the first block with its spec
            rows += _subtree_rows(f"blocks.{k}", block, 1, shapes)
            if copies.get(k):
                rows.append((f"  blocks.{_ranges(copies[k])}", f"same as blocks.{k}", "", "", ""))
    return _table(rows, indent=2)


def _subtree_rows(prefix: str, module: nn.Module, depth: int, shapes: dict, tied: bool = False) -> list[tuple]:
    rows = []
    for name, sub in module.named_modules(prefix=prefix):
        params = sum(p.numel() for p in sub.parameters())
        indent = "  " * (depth + name.count(".") - prefix.count("."))
        label = indent + (prefix if name == prefix else name.rsplit(".", 1)[-1])
        kind = _describe(sub) + (" (tied to wte)" if name == "lm_head" and tied else "")
        rows.append((label, kind, *shapes.get(name, ("", "")), _short(params) if params else ""))
    return rows


def parameter_report(model: GPT) -> str:
    """Total, embedding and non-embedding counts, how they are counted, and the study's count."""
    cfg = model.cfg
    counts = model.parameter_counts()
    d, V, Vp = cfg.d_model, model.vocab_size, cfg.padded_vocab_size
    embedding_what = f"input token table {Vp:,}×{d} (vocab {V:,} padded to a multiple of 64)"
    if model.wpe is not None:
        embedding_what += f" + learned positions {model.seq_len:,}×{d}"
    head = "the output layer is the tied token table" if cfg.tie_embeddings else f"untied output layer {d}×{Vp:,}"
    rows = [
        ("total", f"{counts['total']:,}", ""),
        ("embedding", f"{counts['embedding']:,}", embedding_what),
        ("non-embedding", f"{counts['non_embedding']:,}", f"blocks, final norm; {head}"),
    ]
    lines = [_table(rows, indent=2, align_right=(1,))]
    lines.append("  counted as: non-embedding = all parameters but the input token table (and learned positions);")
    lines.append("  an untied output layer is non-embedding, a tied one is the token table, counted once.")
    study = study_count(d, cfg.n_layer, V, [ffn_width(d, s.ffn_mult) for s in model.specs])
    lines.append(f"  the study's count for this shape: {study['non_embedding']:,} non-embedding = "
                 f"{cfg.n_layer} blocks {study['blocks']:,}")
    lines.append(f"    + classifier block {study['classifier']:,} + biased output layer {study['output']:,}"
                 f" (input embedding {study['input_embedding']:,} left out)")
    if (d, cfg.n_layer, V) == (768, 12, GPT2_VOCAB_SIZE):
        lines.append("  this is the study's baseline: its \"128M non-embedding params\" is that 128,398,417, the same")
        lines.append("  convention on its architecture (biased attention output and FFN layers, and a classifier")
        lines.append("  block that adds a LayerNorm and a 768→3072→768 FFN before the output layer).")
    return "\n".join(lines)


# --- --target-params: width for a budget -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WidthCandidate:
    d_model: int
    n_head: int
    non_embedding: int
    total: int
    study_non_embedding: int


def width_step(head_dim: int) -> int:
    """d_model moves in multiples of 64 that keep whole heads of the config's head size."""
    return 64 * head_dim // math.gcd(64, head_dim)


def width_candidates(cfg: ModelConfig, target: int, n_layer: int, beyond: int = 3) -> list[WidthCandidate]:
    """Every width from one step up to `beyond` steps past the first one over the target.

    The head size stays the config's (n_head = d_model / head_dim). Token shifts are dropped
    for counting: they have no parameters, and their widths are tied to the old d_model.
    """
    step = width_step(cfg.head_dim)
    base = dataclasses.replace(cfg, n_layer=n_layer, shift=(), shift_offsets=(),
                               layers=tuple({k: v for k, v in t.items() if k not in ("shift", "shift_offsets")}
                                            for t in cfg.layers))
    candidates = []
    d = step
    while True:
        trial = dataclasses.replace(base, d_model=d, n_head=d // cfg.head_dim)
        model = build_on_meta(trial)
        counts = model.parameter_counts()
        study = study_count(d, n_layer, model.vocab_size, [ffn_width(d, s.ffn_mult) for s in model.specs])
        candidates.append(WidthCandidate(d, trial.n_head, counts["non_embedding"], counts["total"],
                                         study["non_embedding"]))
        over = sum(c.non_embedding > target for c in candidates)
        if over > beyond:
            return candidates
        d += step


def width_report(cfg: ModelConfig, target: int, n_layer: int | None = None, around: int = 3) -> str:
    """The `--target-params` answer: the best width and its neighbours."""
    n_layer = n_layer or cfg.n_layer
    candidates = width_candidates(cfg, target, n_layer, beyond=around)
    best = min(range(len(candidates)), key=lambda i: abs(candidates[i].non_embedding - target))
    step = width_step(cfg.head_dim)
    lines = [f"width for {target:,} non-embedding parameters at {n_layer} layers "
             f"(d_model in steps of {step}, keeping heads of {cfg.head_dim}: n_head = d_model / {cfg.head_dim})"]
    rows = [("", "d_model", "n_head", "non-embedding", "vs target", "total", "study's count")]
    for i in range(max(0, best - around), min(len(candidates), best + around + 1)):
        c = candidates[i]
        rows.append(("→" if i == best else "", str(c.d_model), str(c.n_head), f"{c.non_embedding:,}",
                     f"{(c.non_embedding - target) / target:+.1%}", f"{c.total:,}", f"{c.study_non_embedding:,}"))
    lines.append(_table(rows, indent=2, align_right=(1, 2, 3, 4, 5, 6)))
    c = candidates[best]
    lines.append(f"best: --set model.d_model={c.d_model} --set model.n_head={c.n_head} --set model.n_layer={n_layer}")
    if cfg.shift or any("shift" in t for t in cfg.layers):
        lines.append("  (shift widths are tied to d_model: restate them for the new width)")
    return "\n".join(lines)


# --- formatting -------------------------------------------------------------------------------------


def _same_blocks(model: GPT) -> dict[int, list[int]]:
    """First block with a given spec -> the later blocks with that same spec (same layout and shapes)."""
    first_with: dict = {}
    copies: dict[int, list[int]] = {}
    for k, spec in enumerate(model.specs):
        if spec in first_with:
            copies[first_with[spec]].append(k)
        else:
            first_with[spec] = k
            copies[k] = []
    return copies


def _ranges(indices: list[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> "1-3, 5, 7-8"."""
    spans = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}→{module.out_features}{', bias' if module.bias is not None else ''})"
    if isinstance(module, nn.Embedding):
        return f"Embedding({module.num_embeddings}, {module.embedding_dim})"
    if isinstance(module, nn.LayerNorm):
        return f"LayerNorm({module.normalized_shape[0]}{', bias' if module.bias is not None else ''})"
    if isinstance(module, RMSNorm):
        return f"RMSNorm({module.weight.shape[0]})"
    if isinstance(module, TokenShift):
        sigmoid = "+sigmoid" if module.sigmoid else ""
        back = ",".join(f"t-{o}" if o else "t" for o in module.offsets)
        return f"TokenShift({_list(module.widths)} from {back}, {module.combine}{sigmoid})"
    if isinstance(module, nn.GELU):
        return "GELU" if module.approximate == "none" else f"GELU({module.approximate})"
    extra = module.extra_repr()
    return f"{type(module).__name__}({extra})" if extra else type(module).__name__


def _shape(x) -> str:
    return "×".join(map(str, x.shape)) if isinstance(x, torch.Tensor) else ""


def _short(n: int) -> str:
    if n >= 10**6:
        return f"{n / 10**6:.2f}M"
    if n >= 10**3:
        return f"{n / 10**3:.1f}K"
    return str(n)


def _list(values) -> str:
    return "[" + ", ".join(map(str, values)) + "]"


def _table(rows: list[tuple], indent: int = 0, align_right: tuple[int, ...] = ()) -> str:
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [str(v).rjust(w) if c in align_right else str(v).ljust(w) for c, (v, w) in enumerate(zip(r, widths))]
        lines.append(" " * indent + "  ".join(cells).rstrip())
    return "\n".join(lines)
