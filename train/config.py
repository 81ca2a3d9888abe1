"""Run configs: TOML files turned into frozen dataclasses, one per table.

A config file has the tables `[model]`, `[data]`, `[optim]`, `[train]`, `[lossdb]` and may
start with `base = "other.toml"` (resolved relative to the file) to inherit another config and
state only what differs. `--set model.shift=[384,384]` overrides go through the same checks.
Every field below carries a docstring-style comment (`#:`) that becomes the config reference.

Token shift notation follows the study: `shift = [a, b, c]` takes the leading `a` features
from token t-2, the next `b` from t-1 and keeps the last `c` from t. `shift_offsets` states the
offsets explicitly (e.g. `shift = [384, 384]`, `shift_offsets = [2, 0]`: half the features
from t-2, none from t-1, i.e. skipping a token).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

PosEncoding = Literal["rope", "alibi", "learned", "none"]
RopeOn = Literal["qk", "qkv", "vo"]
ShiftLocation = Literal["attn", "ffn", "both", "ffn_inner"]
ShiftCombine = Literal["slice", "add", "mult"]
Norm = Literal["layernorm", "rmsnorm"]
Half = Literal["first", "last"]

GPT2_VOCAB_SIZE = 50257


class ConfigError(ValueError):
    """A config problem, phrased as one line naming the file, the key and the value."""


# --- per-layer settings -----------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """The resolved settings of one block: a block reads only its own spec."""

    #: Position encoding inside this block's attention (`learned` lives at the input instead).
    pos: Literal["rope", "alibi", "none"]
    #: Features per head rotated by RoPE (an even count, resolved from a fraction if given).
    rope_features: int
    #: RoPE base (wavelength scale).
    rope_base: float
    #: Which vectors RoPE rotates: `qk`, `qkv` (values rotated, never un-rotated), `vo`.
    rope_on: RopeOn
    #: Token-shift widths, furthest-back first; empty means no shift.
    shift: tuple[int, ...]
    #: Tokens back for each width in `shift` (0 = the current token).
    shift_offsets: tuple[int, ...]
    #: Where the shift sits.
    shift_location: ShiftLocation
    #: How shifted features combine with the current token's.
    shift_combine: ShiftCombine
    #: Apply a sigmoid to the shifted features before combining.
    shift_sigmoid: bool
    #: FFN inner width multiplier.
    ffn_mult: float

    @property
    def shifts(self) -> bool:
        return any(offset > 0 for offset in self.shift_offsets)


# Keys that a `[[model.layers]]` table may override (LayerSpec fields, as written in [model]).
LAYER_KEYS = tuple(f.name for f in dataclasses.fields(LayerSpec))
# Keys that select which layers a `[[model.layers]]` table applies to.
SELECTOR_KEYS = ("every", "offset", "range", "layers", "half")


# --- tables ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """`[model]`: the GPT decoder's shape and its per-layer choices."""

    #: Vocabulary size; 0 = take it from the data set (GPT-2's 50,257 when built without one).
    vocab_size: int = 0
    #: Context length; 0 = take it from the data set (a pinned value must match the data set).
    seq_len: int = 0
    #: Number of transformer blocks.
    n_layer: int = 12
    #: Attention heads per block (d_model must divide evenly).
    n_head: int = 12
    #: Width of the residual stream.
    d_model: int = 768
    #: FFN inner width = ffn_mult × d_model.
    ffn_mult: float = 4.0
    #: Normalisation: `layernorm` or `rmsnorm`.
    norm: Norm = "layernorm"
    #: Share the input embedding with the output layer.
    tie_embeddings: bool = False
    #: Biases in linear layers and LayerNorm.
    bias: bool = False
    #: Position encoding: `rope`, `alibi`, `learned` (absolute, at the input) or `none` (NoPE).
    pos: PosEncoding = "rope"
    #: RoPE features rotated per head: an even count (16) or a fraction of head_dim (0.25).
    rope_features: int | float = 0.25
    #: RoPE base.
    rope_base: float = 10000.0
    #: RoPE target: `qk` (standard), `qkv` (study's default: values too), `vo` (VO-RoPE).
    rope_on: RopeOn = "qk"
    #: Token-shift widths, furthest-back first (`[384, 384]`: half from t-1); [] = no shift.
    shift: tuple[int, ...] = ()
    #: Explicit offsets per width (default: len(shift)-1 … 0, one token apart).
    shift_offsets: tuple[int, ...] = ()
    #: Where the shift sits: `attn` (before attention, after the pre-norm), `ffn`, `both`, `ffn_inner`.
    shift_location: ShiftLocation = "attn"
    #: Combine: `slice` (replace), `add`, `mult`.
    shift_combine: ShiftCombine = "slice"
    #: Sigmoid on the shifted features before combining.
    shift_sigmoid: bool = False
    #: `[[model.layers]]` tables: a selector (every/offset, range, layers, half) plus overrides.
    layers: tuple[dict, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_dim(self) -> int:
        return ffn_width(self.d_model, self.ffn_mult)

    @property
    def padded_vocab_size(self) -> int:
        """Vocabulary rounded up to a multiple of 64 (fast matmuls); padded ids are masked."""
        vocab = self.vocab_size or GPT2_VOCAB_SIZE
        return (vocab + 63) // 64 * 64

    @property
    def layer_specs(self) -> tuple[LayerSpec, ...]:
        """One resolved spec per layer (defaults from [model], then each layers table in order)."""
        return resolve_layers(self)


@dataclass(frozen=True)
class DataConfig:
    """`[data]`: which data set to train on."""

    #: Data set name under HOME/data/ (built with `python cli.py data build --name ...`).
    dataset: str = "demo"


@dataclass(frozen=True)
class OptimConfig:
    """`[optim]`: AdamW with linear warmup and cosine decay."""

    #: Peak learning rate.
    lr: float = 6e-4
    #: Final learning rate as a fraction of the peak.
    min_lr_ratio: float = 0.1
    #: Warmup length as a fraction of all optimizer steps.
    warmup_frac: float = 0.02
    #: AdamW weight decay (applied to matrices only, not to norms, biases or embeddings).
    weight_decay: float = 0.1
    #: AdamW beta1.
    beta1: float = 0.9
    #: AdamW beta2.
    beta2: float = 0.95
    #: AdamW epsilon.
    eps: float = 1e-8
    #: Clip the global gradient norm to this (0 = off).
    grad_clip: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """`[train]`: batch, length, precision and bookkeeping."""

    #: Total training tokens; 0 = one pass over the data set.
    tokens: int = 0
    #: Sequences per optimizer step across all ranks (the global batch).
    batch_size: int = 512
    #: Sequences per forward pass on one rank; gradients accumulate up to batch_size.
    micro_batch_size: int = 16
    #: Seed for the model's initialisation.
    seed: int = 1337
    #: Seed for the data order, apart from `seed`: seeds of one config then see the same tokens in the same order, which paired per-token comparisons need.
    data_seed: int = 1337
    #: `auto` (cuda if available), `cpu`, `cuda`, `cuda:N`.
    device: str = "auto"
    #: Mixed precision on CUDA: `bf16` or `fp32`. CPU always trains in fp32.
    dtype: Literal["bf16", "fp32"] = "bf16"
    #: torch.compile the model (CUDA only; ignored on CPU).
    compile: bool = True
    #: Save a checkpoint every this many optimizer steps (0 = only at the end).
    checkpoint_every: int = 200
    #: Log metrics every this many optimizer steps.
    log_every: int = 10


@dataclass(frozen=True)
class LossDBConfig:
    """`[lossdb]`: recording every training token's loss."""

    #: Record every token's loss (false: for measuring the cost of recording).
    record: bool = True
    #: Tokens per segment; 0 = a tenth of the run (the study: 50M of 500M).
    segment_tokens: int = 0
    #: Write per-part rollups (sums and counts) beside the losses for instant curves.
    rollups: bool = True


@dataclass(frozen=True)
class RunConfig:
    """A whole run: what `load_config` returns; only the entry point sees all of it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lossdb: LossDBConfig = field(default_factory=LossDBConfig)
    #: The config file's name without extension (the default run name).
    name: str = "run"

    def to_dict(self) -> dict:
        """Every table with every default written out (what runs/<run>/config.toml holds)."""
        return {t: _table_to_dict(getattr(self, t)) for t in TABLES}


TABLES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "lossdb": LossDBConfig,
}


def ffn_width(d_model: int, ffn_mult: float) -> int:
    return int(round(d_model * ffn_mult))


# --- loading -----------------------------------------------------------------------------------

SIZE_SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}


def parse_size(text: str | int) -> int:
    """`500M` → 500_000_000; plain integers pass through. Raises ValueError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    s = str(text).strip().replace("_", "").upper()
    if s and s[-1] in SIZE_SUFFIXES:
        value = float(s[:-1]) * SIZE_SUFFIXES[s[-1]]
        if value != int(value):
            raise ValueError(f"{text!r} is not a whole number")
        return int(value)
    return int(s)


def load_config(path: str | Path, overrides: typing.Iterable[str] = ()) -> RunConfig:
    """Load a TOML config (following `base = ...`), apply `table.key=value` overrides, validate.

    Every problem raises ConfigError with one line naming the file (or `--set`), the key path
    and the value, before anything runs.
    """
    path = Path(path)
    raw, origins = _read_with_bases(path, chain=())
    for override in overrides:
        _apply_override(raw, origins, override)
    cfg = _build(raw, origins, name=path.stem)
    return cfg


def config_from_dict(raw: dict, name: str = "run", origin: str = "config") -> RunConfig:
    """Build a RunConfig from a plain dict shaped like the TOML (same checks as load_config)."""
    origins: dict[tuple, str] = {}
    _record_origins(raw, (), origin, origins)
    return _build(raw, origins, name=name)


def to_toml(cfg: RunConfig) -> str:
    """The fully resolved config as TOML, every default written out.

    Written by hand rather than with a TOML library: the trainer runs on GPU boxes that have
    torch, numpy and pyarrow only, and a config holds just scalars, lists and layer tables.
    """
    lines = []
    for table, values in cfg.to_dict().items():
        lines.append(f"[{table}]")
        layers = values.pop("layers", None)
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
        for layer in layers or ():
            lines += [f"[[{table}.layers]]", *(f"{k} = {_toml_value(v)}" for k, v in layer.items()), ""]
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # repr round-trips floats exactly (1e-08, 0.25)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _table_to_dict(table: Any) -> dict:
    out = {}
    for f in dataclasses.fields(table):
        value = getattr(table, f.name)
        if isinstance(value, tuple):
            value = [dict(v) if isinstance(v, dict) else v for v in value]
        out[f.name] = value
    return out


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict]:
    """Read one file, merged over its `base` chain; returns (raw dict, key path → origin)."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: base: inheritance cycle: {cycle}")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        where = f"{chain[-1]}: base" if chain else "config"
        raise ConfigError(f"{where}: file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None

    base = data.pop("base", None)
    if base is None:
        raw, origins = {}, {}
    else:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base = {base!r}: expected a file name (string)")
        raw, origins = _read_with_bases(path.parent / base, (*chain, resolved))
    for key, value in data.items():
        if key not in TABLES:
            raise ConfigError(f"{path}: {key}: unknown table (expected one of: base, {', '.join(TABLES)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {key} = {value!r}: expected a table [{key}]")
        table = raw.setdefault(key, {})
        for name, item in value.items():
            table[name] = item  # lists (shift, layers) replace the base's wholesale
            _forget_origins(origins, (key, name))
            _record_origins(item, (key, name), str(path), origins)
    return raw, origins


def _record_origins(value: Any, key: tuple, origin: str, origins: dict) -> None:
    origins[key] = origin
    if isinstance(value, dict):
        for name, item in value.items():
            _record_origins(item, (*key, name), origin, origins)


def _forget_origins(origins: dict, key: tuple) -> None:
    for k in [k for k in origins if k[: len(key)] == key]:
        del origins[k]


def parse_override(override: str) -> tuple[str, str, Any]:
    """`model.shift=[384,384]` -> ("model", "shift", [384, 384]).

    Values are TOML (`[48,48]`, `true`, `"x"`, `1e-3`); a bare word that is not TOML stays a
    string (`model.pos=alibi`). Raises ConfigError saying what is wrong (without the where).
    """
    if "=" not in override:
        raise ConfigError("expected table.key=value (e.g. model.n_layer=4)")
    key, text = (part.strip() for part in override.split("=", 1))
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{key}: expected table.key (e.g. model.n_layer)")
    table, name = parts
    if table not in TABLES:
        raise ConfigError(f"{table}: unknown table (expected one of: {', '.join(TABLES)})")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # bare words: model.pos=alibi
    return table, name, value


def _apply_override(raw: dict, origins: dict, override: str) -> None:
    try:
        table, name, value = parse_override(override)
    except ConfigError as err:
        raise ConfigError(f"--set {override}: {err}") from None
    raw.setdefault(table, {})[name] = value
    _forget_origins(origins, (table, name))
    _record_origins(value, (table, name), "--set", origins)


# --- building and checking -------------------------------------------------------------------


def _where(origins: dict, key: tuple) -> str:
    """`configs/x.toml: model.n_layer` — the file that set the key, then its dotted path."""
    origin = origins.get(key) or origins.get(key[:2]) or "defaults"
    dotted = key[0] + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key[1:])
    return f"{origin}: {dotted}"


def _fail(origins: dict, key: tuple, value: Any, problem: str) -> typing.NoReturn:
    raise ConfigError(f"{_where(origins, key)} = {_show(value)}: {problem}")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _coerce(value: Any, hint: Any, key: tuple, origins: dict) -> Any:
    """Check `value` against a field's type hint; return it in the field's form."""
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            _fail(origins, key, value, f"expected one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        item_hint = get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            _fail(origins, key, value, "expected a list")
        return tuple(_coerce(v, item_hint, (*key, i), origins) for i, v in enumerate(value))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        # int | float: keep whichever was written (16 = a count, 0.25 = a fraction)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(origins, key, value, "expected a number")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            _fail(origins, key, value, "expected true or false")
        return value
    if hint is int:
        if isinstance(value, str):
            try:
                return parse_size(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(origins, key, value, "expected an integer (sizes like 500M are accepted)")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(origins, key, value, "expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            _fail(origins, key, value, "expected a string")
        return value
    if hint is dict:
        if not isinstance(value, dict):
            _fail(origins, key, value, "expected a table")
        return dict(value)
    raise TypeError(f"unsupported config type {hint!r}")  # a bug in this module, not bad input


def _build_table(cls: type, raw: dict, table: str, origins: dict) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for name, value in raw.items():
        if name not in known:
            _fail(origins, (table, name), value, f"unknown key (known: {', '.join(known)})")
        values[name] = _coerce(value, hints[name], (table, name), origins)
    return cls(**values)


def _build(raw: dict, origins: dict, name: str) -> RunConfig:
    tables = {t: _build_table(cls, raw.get(t, {}), t, origins) for t, cls in TABLES.items()}
    cfg = RunConfig(**tables, name=name)
    _check(cfg, origins)
    return cfg


def _check(cfg: RunConfig, origins: dict) -> None:
    m, t, o, lo = cfg.model, cfg.train, cfg.optim, cfg.lossdb
    for key in ("n_layer", "n_head", "d_model"):
        if getattr(m, key) < 1:
            _fail(origins, ("model", key), getattr(m, key), "must be at least 1")
    for key in ("vocab_size", "seq_len"):
        if getattr(m, key) < 0:
            _fail(origins, ("model", key), getattr(m, key), "must be 0 (from the data set) or positive")
    if m.d_model % m.n_head:
        _fail(origins, ("model", "d_model"), m.d_model, f"not divisible by model.n_head = {m.n_head}")
    if m.ffn_mult <= 0:
        _fail(origins, ("model", "ffn_mult"), m.ffn_mult, "must be positive")
    if not cfg.data.dataset or "/" in cfg.data.dataset:
        _fail(origins, ("data", "dataset"), cfg.data.dataset, "expected a data set name (no '/')")
    if o.lr <= 0:
        _fail(origins, ("optim", "lr"), o.lr, "must be positive")
    if not 0 <= o.warmup_frac < 1:
        _fail(origins, ("optim", "warmup_frac"), o.warmup_frac, "must be in [0, 1)")
    if not 0 <= o.min_lr_ratio <= 1:
        _fail(origins, ("optim", "min_lr_ratio"), o.min_lr_ratio, "must be in [0, 1]")
    for key in ("tokens", "checkpoint_every"):
        if getattr(t, key) < 0:
            _fail(origins, ("train", key), getattr(t, key), "must not be negative")
    for key in ("batch_size", "micro_batch_size", "log_every"):
        if getattr(t, key) < 1:
            _fail(origins, ("train", key), getattr(t, key), "must be at least 1")
    if t.batch_size % t.micro_batch_size:
        _fail(origins, ("train", "batch_size"), t.batch_size,
              f"not a multiple of train.micro_batch_size = {t.micro_batch_size}")
    if lo.segment_tokens < 0:
        _fail(origins, ("lossdb", "segment_tokens"), lo.segment_tokens, "must not be negative")
    _resolve_layers(m, origins)


# --- per-layer resolution ----------------------------------------------------------------------


def resolve_layers(cfg: ModelConfig) -> tuple[LayerSpec, ...]:
    """One LayerSpec per layer: [model]'s values, then each `[[model.layers]]` table in order."""
    return _resolve_layers(cfg, {})


def _select(table: dict, index: int, n_layer: int, origins: dict) -> list[int]:
    """The layers a `[[model.layers]]` table applies to."""
    key = ("model", "layers", index)
    chosen = [k for k in ("every", "range", "layers", "half") if k in table]
    if len(chosen) != 1:
        _fail(origins, key, table, "state exactly one selector: every (with optional offset), range, layers or half")
    kind = chosen[0]
    value = table[kind]
    if "offset" in table and kind != "every":
        _fail(origins, (*key, "offset"), table["offset"], "offset goes with every")
    if kind == "every":
        offset = table.get("offset", 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(origins, (*key, "every"), value, "expected a positive integer")
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < min(value, n_layer):
            _fail(origins, (*key, "offset"), offset, f"expected 0 <= offset < min(every, n_layer = {n_layer})")
        return list(range(offset, n_layer, value))
    if kind == "range":
        try:
            start_text, stop_text = str(value).split(":")
            start = int(start_text) if start_text else 0
            stop = int(stop_text) if stop_text else n_layer
        except ValueError:
            _fail(origins, (*key, "range"), value, 'expected "start:stop" (e.g. "0:6")')
        if not 0 <= start < stop <= n_layer:
            _fail(origins, (*key, "range"), value, f"out of range for model.n_layer = {n_layer}")
        return list(range(start, stop))
    if kind == "layers":
        if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            _fail(origins, (*key, "layers"), value, "expected a list of layer indices")
        for v in value:
            if not 0 <= v < n_layer:
                _fail(origins, (*key, "layers"), value, f"layer {v} out of range for model.n_layer = {n_layer}")
        return sorted(set(value))
    if value not in ("first", "last"):
        _fail(origins, (*key, "half"), value, "expected first or last")
    half = n_layer // 2
    return list(range(half)) if value == "first" else list(range(n_layer - half, n_layer))


def _resolve_layers(m: ModelConfig, origins: dict) -> tuple[LayerSpec, ...]:
    hints = typing.get_type_hints(ModelConfig)
    defaults = {k: getattr(m, k) for k in LAYER_KEYS}
    if m.pos == "learned":
        defaults["pos"] = "none"  # learned positions are added at the input; blocks add none
    keys = {i: {k: ("model", k) for k in LAYER_KEYS} for i in range(m.n_layer)}
    per_layer = [dict(defaults) for _ in range(m.n_layer)]
    for index, table in enumerate(m.layers):
        overrides = {}
        for name, value in table.items():
            key = ("model", "layers", index, name)
            if name in SELECTOR_KEYS:
                continue
            if name not in LAYER_KEYS:
                _fail(origins, key, value,
                      f"unknown key (selectors: {', '.join(SELECTOR_KEYS)}; settings: {', '.join(LAYER_KEYS)})")
            if name == "pos" and value == "learned":
                _fail(origins, key, value, "learned positions are model-wide; a layer may use rope, alibi or none")
            overrides[name] = _coerce(value, hints[name], key, origins)
        for layer in _select(table, index, m.n_layer, origins):
            per_layer[layer].update(overrides)
            keys[layer].update({name: ("model", "layers", index, name) for name in overrides})
    return tuple(_layer_spec(m, values, keys[i], origins) for i, values in enumerate(per_layer))


def _layer_spec(m: ModelConfig, v: dict, keys: dict, origins: dict) -> LayerSpec:
    head_dim = m.head_dim
    rope = v["rope_features"]
    if isinstance(rope, float):
        if not 0 < rope <= 1:
            _fail(origins, keys["rope_features"], rope, "a fraction must be in (0, 1]; use an integer for a count")
        count = round(rope * head_dim)
    else:
        count = rope
    if v["pos"] == "rope":
        if not 0 < count <= head_dim:
            _fail(origins, keys["rope_features"], rope, f"rotates {count} features but a head has {head_dim}")
        if count % 2:
            _fail(origins, keys["rope_features"], rope, f"rotates {count} features: RoPE needs an even number")
    if v["rope_base"] <= 0:
        _fail(origins, keys["rope_base"], v["rope_base"], "must be positive")

    shift, offsets = tuple(v["shift"]), tuple(v["shift_offsets"])
    if shift:
        if not offsets:
            offsets = tuple(range(len(shift) - 1, -1, -1))
        if len(offsets) != len(shift):
            _fail(origins, keys["shift_offsets"], offsets, f"needs one offset per width in shift {_show(shift)}")
        if any(o < 0 for o in offsets):
            _fail(origins, keys["shift_offsets"], offsets, "offsets count tokens back and must be >= 0")
        if any(w < 0 for w in shift):
            _fail(origins, keys["shift"], shift, "widths must be >= 0")
        inner = v["shift_location"] == "ffn_inner"
        width = ffn_width(m.d_model, v["ffn_mult"]) if inner else m.d_model
        if sum(shift) != width:
            what = f"the FFN's inner width {width}" if inner else f"model.d_model = {width}"
            _fail(origins, keys["shift"], shift, f"widths sum to {sum(shift)}, not {what}")
    elif offsets:
        _fail(origins, keys["shift_offsets"], offsets, "given without shift widths")
    if v["ffn_mult"] <= 0:
        _fail(origins, keys["ffn_mult"], v["ffn_mult"], "must be positive")
    return LayerSpec(
        pos=v["pos"], rope_features=count, rope_base=float(v["rope_base"]), rope_on=v["rope_on"],
        shift=shift, shift_offsets=offsets, shift_location=v["shift_location"],
        shift_combine=v["shift_combine"], shift_sigmoid=v["shift_sigmoid"], ffn_mult=float(v["ffn_mult"]),
    )


# --- reference docs ----------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """The `#:` comment above each field of a config dataclass (its documentation)."""
    import inspect

    docs, pending = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
        elif pending and ":" in stripped:
            docs[stripped.split(":", 1)[0].strip()] = " ".join(pending)
            pending = []
    return docs


def reference_markdown() -> str:
    """The config reference (docs/config.md), generated from the dataclasses so it cannot drift."""
    lines = [
        "# Config reference",
        "",
        "Generated from `train/config.py` by `python cli.py model reference --out docs/config.md`; do not edit by hand.",
        "A config may start with `base = \"other.toml\"` and state only what differs;",
        "`--set table.key=value` overrides any key below. Integers accept size suffixes (`500M`).",
    ]
    for table, cls in TABLES.items():
        docs = field_docs(cls)
        lines += ["", f"## `[{table}]`", "", (cls.__doc__ or "").strip(), "", "| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"| `{f.name}` | `{_show(default)}` | {docs.get(f.name, '')} |")
    docs = field_docs(LayerSpec)
    lines += [
        "", "## `[[model.layers]]`", "",
        "Different settings at different depths. Each table selects layers with exactly one of",
        "`every = N` (with optional `offset`), `range = \"start:stop\"`, `layers = [i, j]` or",
        "`half = \"first\"|\"last\"`, and overrides any of these per-layer keys (later tables win):",
        "", "| key | meaning |", "|---|---|",
    ]
    lines += [f"| `{name}` | {docs.get(name, '')} |" for name in LAYER_KEYS]
    return "\n".join(lines) + "\n"
