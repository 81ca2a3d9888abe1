"""Experiment suites: a base config, its variations (a list and/or grids), and seeds.

A suite file (configs/suites/*.toml) names a base config and the variations to run on it:

    name = "token_shift_1"              # optional; default: the file's stem
    description = "..."                 # optional
    base = "../baseline.toml"           # relative to the suite file
    seeds = 2                           # k = 0, 1: train.seed = the config's seed + k; or a list: [1337, 7]
                                        # (the initialisation; seeds share train.data_seed, the data order)
    reference = "no_shift"              # optional: the label `compare` measures differences against
    set = ["train.tokens=1M"]           # optional: overrides for every member (also as tables: [train])

    [[variation]]                       # one labelled variation; no overrides = the base config itself
    label = "no_shift"

    [[variation]]
    label = "shift_48_48"
    set = ["model.shift=[48,48]"]       # `--set` form ...
    [variation.model]                   # ... and/or TOML tables, as in a config file
    shift_location = "attn"

    [[grid]]                            # every combination of one entry from each axis
    label = "combine"                   # optional label prefix
    set = ["model.shift=[48,48]"]       # overrides for every member of the grid
    [[grid.axis]]
    key = "model.shift_combine"
    values = ["add", "mult"]            # labels default to the values: add, mult
    [[grid.axis]]
    key = "model.shift_sigmoid"
    values = [false, true]
    labels = ["", "sigmoid"]            # "" adds nothing to the label
    # an axis may instead list options that set several keys:
    # options = [{label = "1024x6", set = ["model.d_model=1024", "model.n_head=16", "model.n_layer=6"]}]

Members come in file order, variations first, then each grid's combinations (its first axis
varying slowest), each with its seeds. A grid member's label is its prefix and its axis labels
joined with "-" (`combine-add-sigmoid`). A member's run is named `<suite>.<label>.seed<k>`:
stable (adding seeds later keeps the names of the first ones) and safe as a folder and as a
hive partition value, since suite names and labels may not contain dots.

Overrides apply in order: the suite's, the grid's, then the variation's or axes' (two axes of
one grid may not set the same key), then the command line's (`sweep --set/--data`). Every
problem is a one-line SuiteError naming the suite file, the key and the value; a member whose
config fails validation is named too.

`sweep()` trains every member not yet finished, in order, resuming interrupted ones. A member
is trained under a lock file (`HOME/runs/<run>.lock`, flock) so that two sweeps over the same
suite (one per GPU, or on several machines sharing the workspace) never train the same run: the
second finds it busy and moves on. With `nproc_per_node` > 1 each member runs on that many GPUs
through torchrun, launched by the sweep.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from train.config import TABLES, ConfigError, RunConfig, config_from_dict, load_config, parse_override, to_toml
from train.runinfo import read_run_info
from train.runlock import LOCK_HELD_ENV, RunBusy, RunLock
from train.workspace import resolve_home, run_dir

# Suite names and labels: run-name characters without the dot, which separates them in a run name.
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*$")
LABEL_RULE = "use letters, digits, _ + - (starting with a letter or digit; no '.' or '/')"
RUN_NAME = re.compile(r"^(?P<suite>[^.]+)\.(?P<label>[^.]+)\.seed(?P<k>\d+)$")

OVERRIDE_KEYS = ("set", *TABLES)
SUITE_KEYS = ("name", "description", "base", "seeds", "reference", *OVERRIDE_KEYS, "variation", "grid")
VARIATION_KEYS = ("label", "note", "seeds", *OVERRIDE_KEYS)
GRID_KEYS = ("label", "note", "seeds", *OVERRIDE_KEYS, "axis")
AXIS_KEYS = ("key", "values", "labels", "options")
OPTION_KEYS = ("label", *OVERRIDE_KEYS)


class SuiteError(ValueError):
    """A suite problem, phrased as one line naming the suite file, the key and the value."""


# --- what a suite is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Variation:
    """One label: the base config with its overrides, before seeds."""

    label: str
    #: The overrides as `table.key` -> value, in the order they apply (suite's, grid's, own).
    overrides: dict[str, Any]
    #: The resolved config with the base seed (members replace train.seed).
    config: RunConfig
    #: Seeds: a count (seed = config's seed + k) or the explicit seed values.
    seeds: int | tuple[int, ...]
    note: str = ""


@dataclass(frozen=True)
class Member:
    """One run of a suite: a variation with one seed."""

    label: str
    k: int  # seed index: the run's `seed<k>`
    seed: int
    run: str
    config: RunConfig


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    base_path: Path
    base: RunConfig  # the base config with the suite's and the command line's common overrides
    variations: tuple[Variation, ...]
    description: str = ""
    reference: str | None = None

    @property
    def labels(self) -> list[str]:
        return [v.label for v in self.variations]

    def variation(self, label: str) -> Variation:
        for v in self.variations:
            if v.label == label:
                return v
        raise SuiteError(f"{self.path}: no label {label!r} (labels: {', '.join(self.labels)})")

    def run_name(self, label: str, k: int) -> str:
        return f"{self.name}.{label}.seed{k}"

    def select(self, only: str | Sequence[str] | None) -> list[Variation]:
        """The variations whose labels match `only` (comma-separated labels or globs; all when None)."""
        if only is None:
            return list(self.variations)
        patterns = [p.strip() for p in (only.split(",") if isinstance(only, str) else only) if p.strip()]
        if not patterns:
            raise SuiteError(f"{self.path}: --only is empty (labels: {', '.join(self.labels)})")
        for p in patterns:
            if not any(fnmatch.fnmatchcase(label, p) for label in self.labels):
                raise SuiteError(f"{self.path}: --only {p}: no such label (labels: {', '.join(self.labels)})")
        return [v for v in self.variations if any(fnmatch.fnmatchcase(v.label, p) for p in patterns)]

    def members(self, seeds: int | None = None, only: str | Sequence[str] | None = None) -> list[Member]:
        """Every run, in order: each selected variation with each of its seeds.

        `seeds` (the sweep's --seeds N) replaces every variation's count by N (k = 0..N-1); a
        variation with an explicit seed list takes its first N seeds and needs at least N.
        """
        if seeds is not None and seeds < 1:
            raise SuiteError(f"--seeds {seeds}: must be at least 1")
        members = []
        for v in self.select(only):
            values = seed_values(v, seeds, self.path)
            for k, seed in enumerate(values):
                run = self.run_name(v.label, k)
                cfg = dataclasses.replace(v.config, train=dataclasses.replace(v.config.train, seed=seed), name=run)
                members.append(Member(v.label, k, seed, run, cfg))
        return members

    def differences(self, label: str) -> dict[str, Any]:
        """`table.key` -> value where the label's config differs from the base (seed aside)."""
        return config_differences(self.variation(label).config, self.base)


def seed_values(v: Variation, count: int | None, where: Path) -> list[int]:
    if isinstance(v.seeds, tuple):
        if count is None:
            return list(v.seeds)
        if count > len(v.seeds):
            raise SuiteError(f"{where}: --seeds {count}: label {v.label!r} lists only {len(v.seeds)} seeds "
                             f"{list(v.seeds)}")
        return list(v.seeds[:count])
    base = v.config.train.seed
    return [base + k for k in range(count if count is not None else v.seeds)]


def config_differences(cfg: RunConfig, base: RunConfig) -> dict[str, Any]:
    """Flattened `table.key` -> cfg's value where it differs from base's; train.seed is set aside."""
    mine, theirs = _flat(cfg.to_dict()), _flat(base.to_dict())
    return {k: v for k, v in mine.items() if k != "train.seed" and theirs.get(k) != v}


def _flat(d: dict) -> dict[str, Any]:
    return {f"{table}.{key}": value for table, values in d.items() for key, value in values.items()}


def show_value(value: Any) -> str:
    """TOML-like: [48, 48], "add", true."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {show_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def show_differences(diff: dict[str, Any]) -> str:
    return ", ".join(f"{k}={show_value(v)}" for k, v in diff.items())


# --- loading -----------------------------------------------------------------------------------


def load_suite(path: str | Path, overrides: Iterable[str] = ()) -> Suite:
    """Read and check a suite file; `overrides` (`table.key=value`) apply to every member last.

    Raises SuiteError (one line: the suite file, the key, the value) for any problem, before
    anything runs: unknown keys, bad or duplicate labels, bad seeds, overrides that fail the
    config's validation (naming the member), two members with the same config.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise SuiteError(f"suite file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise SuiteError(f"{path}: not valid TOML: {err}") from None
    where = str(path)
    _check_keys(raw, SUITE_KEYS, where, "")

    name = raw.get("name", path.stem)
    _check_label(name, where, "name")
    if "base" not in raw:
        raise SuiteError(f"{where}: base: missing (the config file the suite varies, relative to the suite file)")
    if not isinstance(raw["base"], str):
        raise SuiteError(f"{where}: base = {show_value(raw['base'])}: expected a config file name (string)")
    base_path = path.parent / raw["base"]
    try:
        base_cfg = load_config(base_path)
    except ConfigError as err:
        raise SuiteError(f"{where}: base = {show_value(raw['base'])}: {err}") from None
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SuiteError(f"{where}: description = {show_value(description)}: expected a string")
    default_seeds = _check_seeds(raw.get("seeds", 1), where, "seeds")

    common = _overrides(raw, where, "")
    extra = _parse_sets(list(overrides), "command line", "--set")
    base = _resolve(base_cfg, [common, extra], name, f"{where}: base config with the suite's overrides")

    variations: list[Variation] = []
    for i, item in enumerate(_table_list(raw, "variation", where)):
        key = f"variation[{i}]"
        _check_keys(item, VARIATION_KEYS, where, key)
        if "label" not in item:
            raise SuiteError(f"{where}: {key}.label: missing (every variation needs a short label)")
        label = _check_label(item["label"], where, f"{key}.label")
        own = _overrides(item, where, key)
        seeds = _check_seeds(item["seeds"], where, f"{key}.seeds") if "seeds" in item else default_seeds
        variations.append(_variation(base_cfg, label, [common, own, extra], seeds, _note(item, where, key), where, key))

    for g, grid in enumerate(_table_list(raw, "grid", where)):
        key = f"grid[{g}]"
        _check_keys(grid, GRID_KEYS, where, key)
        prefix = _check_label(grid["label"], where, f"{key}.label") if "label" in grid else ""
        own = _overrides(grid, where, key)
        seeds = _check_seeds(grid["seeds"], where, f"{key}.seeds") if "seeds" in grid else default_seeds
        axes = [_axis(a, where, f"{key}.axis[{i}]") for i, a in enumerate(_table_list(grid, "axis", where, key))]
        if not axes:
            raise SuiteError(f"{where}: {key}.axis: missing (a grid needs at least one [[grid.axis]])")
        for combo in itertools.product(*axes):
            label = "-".join(part for part in [prefix, *(option_label for option_label, _ in combo)] if part)
            if not label:
                raise SuiteError(f"{where}: {key}: a combination has an empty label (give the grid a label or "
                                 "the axis entries non-empty labels)")
            merged: dict[str, Any] = {}
            seen: dict[str, int] = {}
            for axis_index, (_, option) in enumerate(combo):
                for k, v in option.items():
                    if k in seen:
                        raise SuiteError(f"{where}: {key}: axes {seen[k]} and {axis_index} both set {k}")
                    seen[k] = axis_index
                    merged[k] = v
            variations.append(_variation(base_cfg, label, [common, own, merged, extra], seeds,
                                         _note(grid, where, key), where, f"{key} member {label!r}"))

    if not variations:
        raise SuiteError(f"{where}: no members (add [[variation]] or [[grid]] tables)")
    _check_unique(variations, where)
    reference = raw.get("reference")
    if reference is not None and reference not in [v.label for v in variations]:
        raise SuiteError(f"{where}: reference = {show_value(reference)}: no member has this label "
                         f"(labels: {', '.join(v.label for v in variations)})")
    return Suite(name=name, path=path, base_path=base_path, base=base, variations=tuple(variations),
                 description=description, reference=reference)


def _variation(base_cfg: RunConfig, label: str, layers: list[dict], seeds, note: str, where: str,
               key: str) -> Variation:
    merged = {k: v for layer in layers for k, v in layer.items()}
    cfg = _resolve(base_cfg, layers, label, f"{where}: {key} (label {label!r})")
    return Variation(label=label, overrides=merged, config=cfg, seeds=seeds, note=note)


def _resolve(base_cfg: RunConfig, layers: list[dict], name: str, origin: str) -> RunConfig:
    """The base config with each layer's `table.key` overrides applied in order, validated."""
    raw = base_cfg.to_dict()
    for layer in layers:
        for dotted, value in layer.items():
            table, key = dotted.split(".", 1)
            raw[table][key] = value
    try:
        return config_from_dict(raw, name=name, origin=origin)
    except ConfigError as err:
        raise SuiteError(str(err)) from None


def _table_list(raw: dict, key: str, where: str, parent: str = "") -> list[dict]:
    items = raw.get(key, [])
    dotted = f"{parent}.{key}" if parent else key
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise SuiteError(f"{where}: {dotted}: expected [[{key}]] tables")
    return items


def _check_keys(table: dict, allowed: Sequence[str], where: str, prefix: str) -> None:
    for key, value in table.items():
        if key not in allowed:
            dotted = f"{prefix}.{key}" if prefix else key
            raise SuiteError(f"{where}: {dotted} = {show_value(value)}: unknown key (expected one of: "
                             f"{', '.join(allowed)})")


def _check_label(label: Any, where: str, key: str) -> str:
    if not isinstance(label, str) or not LABEL.match(label):
        raise SuiteError(f"{where}: {key} = {show_value(label)}: not a filesystem-safe name; {LABEL_RULE}")
    return label


def _note(item: dict, where: str, key: str) -> str:
    note = item.get("note", "")
    if not isinstance(note, str):
        raise SuiteError(f"{where}: {key}.note = {show_value(note)}: expected a string")
    return note


def _check_seeds(value: Any, where: str, key: str) -> int | tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise SuiteError(f"{where}: {key} = {value}: must be at least 1 (a count) or a list of seeds")
        return value
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                 for s in value):
        if len(set(value)) != len(value):
            raise SuiteError(f"{where}: {key} = {show_value(value)}: seeds repeat")
        return tuple(value)
    raise SuiteError(f"{where}: {key} = {show_value(value)}: expected a count (2) or a list of seeds ([1337, 7])")


def _overrides(item: dict, where: str, prefix: str) -> dict[str, Any]:
    """A table's overrides as `table.key` -> value: its `set` strings, then its config tables."""
    out: dict[str, Any] = {}
    key = f"{prefix}.set" if prefix else "set"
    sets = item.get("set", [])
    if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
        raise SuiteError(f"{where}: {key} = {show_value(sets)}: expected a list of \"table.key=value\" strings")
    out.update(_parse_sets(sets, where, key))
    for table in TABLES:
        if table not in item:
            continue
        values = item[table]
        dotted = f"{prefix}.{table}" if prefix else table
        if not isinstance(values, dict):
            raise SuiteError(f"{where}: {dotted} = {show_value(values)}: expected a table [{dotted}]")
        for name, value in values.items():
            out[f"{table}.{name}"] = value
    return out


def _parse_sets(sets: Sequence[str], where: str, key: str) -> dict[str, Any]:
    """`["model.shift=[48,48]", "model.pos=alibi"]` -> {"model.shift": [48, 48], "model.pos": "alibi"}.

    Values are TOML (`[48,48]`, `true`, `"x"`, `1e-3`); a bare word that is not TOML is a string,
    as with `train --set`.
    """
    out = {}
    for text in sets:
        try:
            table, name, value = parse_override(text)
        except ConfigError as err:
            raise SuiteError(f"{where}: {key}: {text!r}: {err}") from None
        out[f"{table}.{name}"] = value
    return out


def _axis(axis: dict, where: str, key: str) -> list[tuple[str, dict[str, Any]]]:
    """A grid axis as (label, overrides) entries."""
    _check_keys(axis, AXIS_KEYS, where, key)
    if ("options" in axis) == ("key" in axis or "values" in axis):
        raise SuiteError(f"{where}: {key}: give either key + values (+ labels) or options")
    if "options" in axis:
        options = axis["options"]
        if not isinstance(options, list) or not options or not all(isinstance(o, dict) for o in options):
            raise SuiteError(f"{where}: {key}.options: expected a non-empty list of tables "
                             "({label = \"...\", set = [...]})")
        entries = []
        for i, option in enumerate(options):
            okey = f"{key}.options[{i}]"
            _check_keys(option, OPTION_KEYS, where, okey)
            if "label" not in option:
                raise SuiteError(f"{where}: {okey}.label: missing")
            label = option["label"]
            if label != "":
                _check_label(label, where, f"{okey}.label")
            entries.append((label, _overrides(option, where, okey)))
        _check_axis_labels([e[0] for e in entries], where, key)
        return entries
    if "key" not in axis or "values" not in axis:
        raise SuiteError(f"{where}: {key}: needs both key and values")
    dotted, values = axis["key"], axis["values"]
    if not isinstance(dotted, str) or len(dotted.split(".")) != 2 or dotted.split(".")[0] not in TABLES:
        raise SuiteError(f"{where}: {key}.key = {show_value(dotted)}: expected table.key (e.g. model.shift); "
                         f"tables: {', '.join(TABLES)}")
    if not isinstance(values, list) or not values:
        raise SuiteError(f"{where}: {key}.values = {show_value(values)}: expected a non-empty list")
    if "labels" in axis:
        labels = axis["labels"]
        if not isinstance(labels, list) or len(labels) != len(values) or not all(isinstance(s, str) for s in labels):
            raise SuiteError(f"{where}: {key}.labels = {show_value(labels)}: expected one string per value "
                             f"({len(values)})")
        for i, label in enumerate(labels):
            if label != "":
                _check_label(label, where, f"{key}.labels[{i}]")
    else:
        labels = []
        for i, value in enumerate(values):
            label = value_label(dotted, value)
            if not LABEL.match(label):
                raise SuiteError(f"{where}: {key}.values[{i}] = {show_value(value)}: no filesystem-safe label "
                                 f"comes from it ({label!r}); give the axis labels = [...]")
            labels.append(label)
    _check_axis_labels(labels, where, key)
    return [(label, {dotted: value}) for label, value in zip(labels, values)]


def _check_axis_labels(labels: list[str], where: str, key: str) -> None:
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise SuiteError(f"{where}: {key}: labels repeat: {', '.join(repr(r) for r in repeated)}")


def value_label(dotted: str, value: Any) -> str:
    """A label from an axis value: "add", 16, 0.25 -> "0p25", [48, 48] -> "48_48",
    true -> the key's name ("shift_sigmoid"), false -> "no_" + the key's name."""
    name = dotted.split(".", 1)[1]
    if isinstance(value, bool):
        return name if value else f"no_{name}"
    if isinstance(value, float):
        return repr(value).replace(".", "p").replace("-", "m")
    if isinstance(value, (list, tuple)):
        return "_".join(value_label(dotted, v) for v in value) or "none"
    return str(value)


def _check_unique(variations: list[Variation], where: str) -> None:
    by_label: dict[str, Variation] = {}
    by_config: dict[str, str] = {}
    for v in variations:
        if v.label in by_label:
            raise SuiteError(f"{where}: label {v.label!r} appears twice (labels name runs: make them unique)")
        by_label[v.label] = v
        # the same config twice would train the same run under two names
        key = json.dumps(v.config.to_dict(), sort_keys=True, default=str) + repr(v.seeds)
        if key in by_config:
            raise SuiteError(f"{where}: labels {by_config[key]!r} and {v.label!r} have the same config")
        by_config[key] = v.label


# --- status, dry run ---------------------------------------------------------------------------


def member_status(home: Path, run: str) -> str:
    """finished | running (stopped or killed: resumable) | failed | started (folder, no run.json) | new."""
    folder = run_dir(home, run)
    info = read_run_info(folder) if folder.exists() else None
    if info is not None:
        return str(info.get("status"))
    return "started" if folder.exists() else "new"


def _estimate(cfg: RunConfig, home: Path) -> tuple[RunConfig, str]:
    """The config resolved against its data set when it is built (exact tokens, vocabulary), and a
    note when it is not."""
    from train.dataset import open_dataset
    from train.trainer import TrainError, resolve_config

    try:
        ds = open_dataset(home, cfg.data.dataset)
    except (FileNotFoundError, ValueError):
        return cfg, (f"data set {cfg.data.dataset!r} is not built in {home}: parameter counts assume GPT-2's "
                     "vocabulary, and one pass over it has an unknown length")
    try:
        resolved, _ = resolve_config(cfg, ds, world_size=1)
    except TrainError as err:
        return cfg, str(err)
    return resolved, ""


def dry_run(suite: Suite, members: list[Member], home: str | Path | None) -> str:
    """The `sweep --dry-run` listing: each run with its status, parameter counts and tokens."""
    from train.summary import build_on_meta

    home = resolve_home(home)
    counts: dict[str, tuple[dict, RunConfig, str]] = {}
    rows = [("run", "status", "seed", "params", "non-emb.", "tokens", "differs from the base config")]
    notes: list[str] = []
    todo_tokens = 0
    for m in members:
        if m.label not in counts:
            resolved, note = _estimate(m.config, home)
            try:
                n = build_on_meta(resolved.model).parameter_counts()
            except Exception as err:  # a shape the model refuses: say so, keep listing
                n = {"total": None, "non_embedding": None}
                note = note or f"model does not build: {err}"
            counts[m.label] = (n, resolved, note)
            if note and note not in notes:
                notes.append(note)
        n, resolved, note = counts[m.label]
        tokens = resolved.train.tokens
        status = member_status(home, m.run)
        if status != "finished" and tokens:
            todo_tokens += tokens
        rows.append((m.run, status, str(m.seed), _count(n["total"]), _count(n["non_embedding"]),
                     f"{tokens:,}" if tokens else "one pass", show_differences(suite.differences(m.label)) or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [f"suite {suite.name} ({suite.path}): {len(members)} runs on base {suite.base_path}"]
    for r in rows:
        lines.append("  " + "  ".join(v.rjust(w) if c in (2, 3, 4, 5) else v.ljust(w)
                                      for c, (v, w) in enumerate(zip(r, widths))).rstrip())
    todo = sum(member_status(home, m.run) != "finished" for m in members)
    lines.append(f"{todo} of {len(members)} runs to train" + (f", {todo_tokens:,} tokens" if todo_tokens else ""))
    lines += [f"  note: {n}" for n in notes]
    return "\n".join(lines)


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


# --- a lock per run ------------------------------------------------------------------------------


# --- sweeping ------------------------------------------------------------------------------------

CLI = Path(__file__).resolve().parent.parent / "cli.py"


@dataclass
class SweepReport:
    trained: list[str] = field(default_factory=list)
    already_finished: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: str | None = None  # the run interrupted by Ctrl-C / SIGTERM (the sweep stops there)

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped is None


def sweep(members: list[Member], home: str | Path | None, log: Callable[[str], None] = print,
          progress: bool = False, nproc_per_node: int = 1) -> SweepReport:
    """Train every member not yet finished, in order; one log line per run.

    A finished run is never retrained; a run with a config.toml is resumed (the trainer checks
    that its saved config matches); a member locked by another process is left to it. A member
    that fails is reported and the sweep goes on; Ctrl-C stops the sweep once the interrupted
    run has saved its checkpoint (the next sweep resumes it).

    nproc_per_node > 1 trains each member on that many GPUs of this machine: the sweep stays one
    process, holds the lock and launches `torchrun --standalone ... cli.py train` per member.
    The sweep itself never runs under torchrun: the trainer joins and leaves the process group
    once per run, and a process group cannot be rejoined reliably within one process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SuiteError("sweep runs as one process; for several GPUs per run use --nproc-per-node N "
                         "(it launches torchrun for each run) instead of starting the sweep with torchrun")
    if nproc_per_node < 1:
        raise SuiteError(f"--nproc-per-node {nproc_per_node}: must be at least 1")
    home = resolve_home(home)
    _check_datasets([m for m in members if member_status(home, m.run) != "finished"], home)
    report = SweepReport()
    for i, m in enumerate(members, 1):
        head = f"[{i}/{len(members)}] {m.run}"
        lock = RunLock(home, m.run)
        try:
            lock.acquire()
        except RunBusy as busy:
            log(f"{head}: busy, left to the process training it; {busy}")
            report.busy.append(m.run)
            continue
        try:
            # read under the lock: another sweep may have finished it a moment ago
            if member_status(home, m.run) == "finished":
                log(f"{head}: finished already, skipped")
                report.already_finished.append(m.run)
                continue
            resume = (run_dir(home, m.run) / "config.toml").exists()
            log(f"{head}: {'resuming' if resume else 'starting'} (label {m.label}, seed {m.seed})")
            started = time.perf_counter()
            if nproc_per_node == 1:
                status, message = _train_here(m, home, resume, progress)
            else:
                status, message = _train_with_torchrun(m, home, resume, progress, nproc_per_node, lock)
            seconds = time.perf_counter() - started
            if status == "failed":
                log(f"{head}: failed: {message}")
                report.failed.append(m.run)
            elif status == "stopped":
                log(f"{head}: stopped ({message}); the next sweep resumes it")
                report.stopped = m.run
                return report
            else:
                log(f"{head}: finished, {message}, {seconds:,.0f} s")
                report.trained.append(m.run)
        finally:
            lock.release()
    return report


def _check_datasets(members: list[Member], home: Path) -> None:
    """Fail once, before training anything, when a data set the runs need is not built."""
    from train.dataset import open_dataset

    for name in dict.fromkeys(m.config.data.dataset for m in members):
        try:
            open_dataset(home, name)
        except (FileNotFoundError, ValueError) as err:
            raise SuiteError(str(err)) from None


def _train_here(m: Member, home: Path, resume: bool, progress: bool) -> tuple[str, str]:
    """Train in this process: (finished | stopped | failed, what to say)."""
    from train.trainer import TrainError, train

    try:
        result = train(m.config, home=home, run=m.run, resume=resume, progress=progress)
    except TrainError as err:
        return "failed", str(err)
    if result.status != "finished":
        return "stopped", f"at step {result.steps} of {result.total_steps}"
    return "finished", (f"{result.tokens_trained:,} tokens in {result.steps} steps "
                        f"({result.tokens_per_s:,.0f} tokens/s)")


def _train_with_torchrun(m: Member, home: Path, resume: bool, progress: bool, nproc: int,
                         lock: RunLock) -> tuple[str, str]:
    """Train through `torchrun --standalone --nproc-per-node N cli.py train`, the member's config
    written to a temporary file. The child inherits the lock's file descriptor, so the lock holds
    while torchrun lives, even if this process dies first."""
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        config = Path(tmp) / f"{m.run}.toml"
        config.write_text(to_toml(m.config))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   str(CLI), "train", "--config", str(config), "--run-name", m.run, "--home", str(home),
                   *(["--resume"] if resume else [])]
        output = None if progress else subprocess.PIPE
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if output else None, text=True,
                                 pass_fds=(lock.fd,), env={**os.environ, LOCK_HELD_ENV: m.run})
        interrupted = False
        try:
            out, _ = child.communicate()
        except KeyboardInterrupt:
            # a terminal's Ctrl-C reached the workers too; torchrun turns its own SIGINT into a
            # SIGTERM for them, which the trainer also takes as "checkpoint and stop"
            interrupted = True
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
            out, _ = child.communicate()
    info = read_run_info(run_dir(home, m.run)) or {}
    if child.returncode == 0 and info.get("status") == "finished":
        return "finished", f"{info.get('tokens_trained', 0):,} tokens on {nproc} processes"
    if interrupted or child.returncode == 130:
        return "stopped", f"torchrun exited with {child.returncode}"
    tail = " | ".join(line.strip() for line in (out or "").strip().splitlines()[-3:])
    return "failed", f"torchrun exited with {child.returncode}" + (f": {tail}" if tail else "")


def parse_run_name(run: str) -> tuple[str, str, int] | None:
    """`token_shift_1.shift_48_48.seed1` -> ("token_shift_1", "shift_48_48", 1); None otherwise."""
    m = RUN_NAME.match(run)
    return (m["suite"], m["label"], int(m["k"])) if m else None


def suite_runs(suite: Suite, existing: Iterable[str], only: str | Sequence[str] | None = None,
               seeds: int | None = None) -> list[tuple[str, str, str]]:
    """(label, run, differences from the base) for `compare`: each selected label's members plus
    any other `<suite>.<label>.seed<k>` run in `existing` (e.g. from a sweep with more --seeds)."""
    existing = list(existing)
    out = []
    for v in suite.select(only):
        ks = {m.k for m in suite.members(seeds, [v.label])}
        for run in existing:
            parsed = parse_run_name(run)
            if parsed and parsed[0] == suite.name and parsed[1] == v.label:
                ks.add(parsed[2])
        differs = show_differences(suite.differences(v.label))
        out += [(v.label, suite.run_name(v.label, k), differs) for k in sorted(ks)]
    return out
