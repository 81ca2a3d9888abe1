"""Suites (train/suite.py), `cli.py sweep` and `cli.py compare`, on CPU with a tiny model and data set.

Parsing and expansion need only a base config file; the sweep tests train a 2-layer, 32-wide
model on a bpe:300 data set of 32-token rows, a few dozen steps per run. `compare` is checked
against SQL written here over the `losses` and `vocab` views, and numpy's mean and std.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lossdb
from analysis import compare as cmp
from lossdb.schema import check_run_name
from train.config import load_config
from tiny_data import build_tiny_dataset
from train.model import build_model
from train.runlock import RunBusy, RunLock
from train.suite import (SuiteError, dry_run, load_suite, member_status, suite_runs, sweep,
                         value_label)

REPO = Path(__file__).resolve().parent.parent
SEQ_LEN = 32
BATCH = 4
STEPS = 40
TOKENS_PER_STEP = BATCH * SEQ_LEN
TOKENS = STEPS * TOKENS_PER_STEP

BASE = f"""
[model]
n_layer = 2
n_head = 2
d_model = 32

[data]
dataset = "tiny"

[optim]
lr = 3e-3

[train]
tokens = {TOKENS}
batch_size = {BATCH}
micro_batch_size = {BATCH}
seed = 100
checkpoint_every = 2
log_every = 1
device = "cpu"
compile = false

[lossdb]
segment_tokens = {10 * TOKENS_PER_STEP}
"""

# Two labels, two seeds each: what the sweep and compare tests train.
TWO_BY_TWO = """
base = "base.toml"
seeds = 2

[[variation]]
label = "plain"

[[variation]]
label = "shift"
set = ["model.shift=[16,16]"]
"""


def write_suite(folder: Path, text: str, name: str = "s.toml") -> Path:
    """A suite file beside the tiny base config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.toml").write_text(BASE)
    path = folder / name
    path.write_text(text)
    return path


# --- parsing and expansion --------------------------------------------------------------------------

GRID_SUITE = """
base = "base.toml"
seeds = 2

[[variation]]
label = "plain"

[[variation]]
label = "half"
set = ["model.shift=[16,16]"]

[[grid]]
label = "mix"
set = ["model.shift=[16,16]"]
[[grid.axis]]
key = "model.shift_combine"
values = ["add", "mult"]
[[grid.axis]]
key = "model.shift_sigmoid"
values = [false, true]
labels = ["", "sig"]
"""


def test_variations_then_grid_combinations_each_with_its_seeds(tmp_path):
    suite = load_suite(write_suite(tmp_path, GRID_SUITE))
    assert suite.name == "s"
    # variations in file order, then the grid with its first axis varying slowest; "" adds nothing
    assert suite.labels == ["plain", "half", "mix-add", "mix-add-sig", "mix-mult", "mix-mult-sig"]
    members = suite.members()
    assert [m.run for m in members[:4]] == ["s.plain.seed0", "s.plain.seed1", "s.half.seed0", "s.half.seed1"]
    assert len(members) == 12
    # seed k = the base config's seed (100) + k
    assert [(m.k, m.seed, m.config.train.seed) for m in members[:2]] == [(0, 100, 100), (1, 101, 101)]
    by_run = {m.run: m.config for m in members}
    mm = by_run["s.mix-mult-sig.seed1"].model
    assert (mm.shift, mm.shift_combine, mm.shift_sigmoid) == ((16, 16), "mult", True)
    ma = by_run["s.mix-add.seed0"].model
    assert (ma.shift, ma.shift_combine, ma.shift_sigmoid) == ((16, 16), "add", False)
    base = load_config(tmp_path / "base.toml").to_dict()
    assert by_run["s.plain.seed0"].to_dict() == base
    assert suite.differences("plain") == {}
    assert suite.differences("mix-add") == {"model.shift": [16, 16], "model.shift_combine": "add"}
    for m in members:
        check_run_name(m.run)
        assert m.config.name == m.run


def test_set_strings_and_tables_give_the_same_config(tmp_path):
    as_set = load_suite(write_suite(tmp_path / "a", """
base = "base.toml"
[[variation]]
label = "x"
set = ["model.shift=[16,16]", "model.shift_location=ffn", "optim.lr=1e-3"]
"""))
    as_tables = load_suite(write_suite(tmp_path / "b", """
base = "base.toml"
[[variation]]
label = "x"
[variation.model]
shift = [16, 16]
shift_location = "ffn"
[variation.optim]
lr = 1e-3
"""))
    assert as_set.variation("x").config.to_dict() == as_tables.variation("x").config.to_dict()
    assert as_set.variation("x").config.model.shift_location == "ffn"  # a bare word is a string, as with --set


def test_overrides_apply_suite_then_grid_then_own_then_command_line(tmp_path):
    path = write_suite(tmp_path, """
base = "base.toml"
set = ["optim.lr=0.01"]
[train]
batch_size = 8

[[variation]]
label = "inherits"

[[variation]]
label = "own"
set = ["optim.lr=0.02"]

[[grid]]
set = ["optim.lr=0.03", "optim.beta1=0.8"]
[[grid.axis]]
key = "optim.beta1"
values = [0.5]
""")
    suite = load_suite(path)
    lr = {v.label: v.config.optim.lr for v in suite.variations}
    assert lr == {"inherits": 0.01, "own": 0.02, "0p5": 0.03}
    assert suite.variation("0p5").config.optim.beta1 == 0.5  # the axis beats the grid's set
    assert all(v.config.train.batch_size == 8 for v in suite.variations)
    overridden = load_suite(path, ["optim.weight_decay=0.0"])  # sweep --set: last, for every member
    assert {v.config.optim.weight_decay for v in overridden.variations} == {0.0}
    assert {v.label: v.config.optim.lr for v in overridden.variations} == lr
    with pytest.raises(SuiteError, match="labels 'inherits' and 'own' have the same config"):
        load_suite(path, ["optim.lr=0.04"])  # ... so it may erase what tells members apart


def test_seeds_counts_lists_and_the_seeds_option(tmp_path):
    suite = load_suite(write_suite(tmp_path, """
base = "base.toml"
seeds = 3

[[variation]]
label = "counted"

[[variation]]
label = "listed"
seeds = [7, 1337]
set = ["optim.lr=0.01"]

[[variation]]
label = "one"
seeds = 1
set = ["optim.lr=0.02"]
"""))
    seeds = lambda members: [(m.run, m.seed) for m in members]  # noqa: E731
    assert seeds(suite.members()) == [
        ("s.counted.seed0", 100), ("s.counted.seed1", 101), ("s.counted.seed2", 102),
        ("s.listed.seed0", 7), ("s.listed.seed1", 1337), ("s.one.seed0", 100),
    ]
    # --seeds N replaces every count; an explicit list gives its first N
    assert seeds(suite.members(seeds=2)) == [
        ("s.counted.seed0", 100), ("s.counted.seed1", 101), ("s.listed.seed0", 7), ("s.listed.seed1", 1337),
        ("s.one.seed0", 100), ("s.one.seed1", 101),
    ]
    # names are stable: more seeds later keep the first runs' names and seeds
    assert seeds(suite.members(seeds=5, only="counted"))[:3] == seeds(suite.members(only="counted"))
    with pytest.raises(SuiteError, match=r"--seeds 3: label 'listed' lists only 2 seeds"):
        suite.members(seeds=3)
    with pytest.raises(SuiteError, match="--seeds 0"):
        suite.members(seeds=0)


def test_only_selects_labels_by_name_or_glob(tmp_path):
    suite = load_suite(write_suite(tmp_path, GRID_SUITE))
    assert [v.label for v in suite.select("mix-*")] == ["mix-add", "mix-add-sig", "mix-mult", "mix-mult-sig"]
    assert [v.label for v in suite.select("half, plain")] == ["plain", "half"]  # suite order, not the option's
    with pytest.raises(SuiteError, match=r"--only nope: no such label \(labels: plain, half, mix-add"):
        suite.select("plain,nope")


def test_labels_from_axis_values():
    assert value_label("model.shift_combine", "add") == "add"
    assert value_label("model.rope_features", 16) == "16"
    assert value_label("model.rope_features", 0.25) == "0p25"
    assert value_label("model.shift", [48, 48]) == "48_48"
    assert value_label("model.shift_sigmoid", True) == "shift_sigmoid"
    assert value_label("model.shift_sigmoid", False) == "no_shift_sigmoid"


# --- the shipped suites -------------------------------------------------------------------------------

SUITES = REPO / "configs" / "suites"
STUDY_GROUPS = ["token_shift_1", "token_shift_2", "token_shift_3", "rope_1", "rope_2", "rope_3"]


def test_every_study_group_ships_with_a_tiny_twin():
    names, runs = set(), set()
    for group in STUDY_GROUPS:
        full, tiny = load_suite(SUITES / f"{group}.toml"), load_suite(SUITES / "tiny" / f"{group}.toml")
        assert full.base_path.resolve() == (REPO / "configs" / "baseline.toml").resolve()
        assert tiny.base_path.resolve() == (REPO / "configs" / "tiny" / "baseline.toml").resolve()
        for suite in (full, tiny):
            assert suite.name not in names  # one workspace may hold every suite's runs
            names.add(suite.name)
            assert suite.reference in suite.labels
            for m in suite.members():
                check_run_name(m.run)
                assert m.run not in runs
                runs.add(m.run)


def test_token_shift_1_holds_the_study_variations():
    full = load_suite(SUITES / "token_shift_1.toml")
    shifts = {v.config.model.shift for v in full.variations if v.config.model.shift_location == "attn"}
    for widths in [(400, 368), (384, 384), (368, 400), (308, 460), (256, 512), (168, 600), (100, 668), (68, 700),
                   (256, 256, 256), (128, 256, 384)]:
        assert widths in shifts
    assert {v.config.model.shift_location for v in full.variations} == {"attn", "ffn", "both", "ffn_inner"}
    combines = {(v.config.model.shift_combine, v.config.model.shift_sigmoid) for v in full.variations
                if v.config.model.shift}
    assert combines == {(c, s) for c in ("slice", "add", "mult") for s in (False, True)}

    tiny = load_suite(SUITES / "tiny" / "token_shift_1.toml")
    # what the first finding runs: no shift, [d/2, d/2], [d/3, d/3, d/3], and the FFN-located shift
    model = {label: tiny.variation(label).config.model for label in ("no_shift", "shift_48_48", "shift_32_32_32", "ffn")}
    assert model["no_shift"].shift == () and model["no_shift"].d_model == 96
    assert (model["shift_48_48"].shift, model["shift_48_48"].shift_location) == ((48, 48), "attn")
    assert (model["shift_32_32_32"].shift, model["shift_32_32_32"].shift_location) == ((32, 32, 32), "attn")
    assert (model["ffn"].shift, model["ffn"].shift_location) == ((48, 48), "ffn")


def test_token_shift_2_compares_shapes_at_about_the_same_budget():
    suite = load_suite(SUITES / "token_shift_2.toml")

    def non_embedding(label: str) -> int:
        with torch.device("meta"):
            model = build_model(suite.variation(label).config.model)
        return model.parameter_counts()["non_embedding"]

    base = non_embedding("768x12")
    for label in ("1024x6", "576x24"):
        assert abs(non_embedding(label) - base) / base < 0.03, label


# --- bad suite files -----------------------------------------------------------------------------------

ONE = '\n[[variation]]\nlabel = "a"\n'
BAD_SUITES = {
    "not TOML": ('base = "base.toml"\n[[variation]\n', ["not valid TOML"]),
    "unknown key": ('base = "base.toml"\nseed = 2\n' + ONE, ["seed = 2: unknown key", "seeds"]),
    "unknown variation key": ('base = "base.toml"\n[[variation]]\nlabel = "a"\nsett = []\n',
                              ["variation[0].sett = []: unknown key"]),
    "missing base": (ONE, ["base: missing"]),
    "base not found": ('base = "nowhere.toml"' + ONE, ['base = "nowhere.toml"', "file not found"]),
    "missing label": ('base = "base.toml"\n[[variation]]\nset = []\n', ["variation[0].label: missing"]),
    "label with a slash": ('base = "base.toml"' + ONE + '[[variation]]\nlabel = "b/c"\nset = ["optim.lr=1"]\n',
                           ['variation[1].label = "b/c"', "filesystem-safe"]),
    "label with a dot": ('base = "base.toml"\n[[variation]]\nlabel = "b.c"\n', ['variation[0].label = "b.c"']),
    "suite name": ('name = "my suite"\nbase = "base.toml"' + ONE, ['name = "my suite"', "filesystem-safe"]),
    "duplicate label": ('base = "base.toml"' + ONE + '[[variation]]\nlabel = "a"\nset = ["optim.lr=1"]\n',
                        ["label 'a' appears twice"]),
    "same config twice": ('base = "base.toml"' + ONE + '[[variation]]\nlabel = "b"\nset = ["optim.lr=3e-3"]\n',
                          ["labels 'a' and 'b' have the same config"]),
    "no members": ('base = "base.toml"\n', ["no members"]),
    "seeds zero": ('base = "base.toml"\nseeds = 0' + ONE, ["seeds = 0: must be at least 1"]),
    "seeds repeat": ('base = "base.toml"\nseeds = [3, 3]' + ONE, ["seeds = [3, 3]: seeds repeat"]),
    "seeds text": ('base = "base.toml"' + ONE + 'seeds = "two"\n', ['variation[0].seeds = "two"']),
    "set not a list": ('base = "base.toml"\n[[variation]]\nlabel = "a"\nset = "optim.lr=1"\n',
                       ['variation[0].set = "optim.lr=1"', "expected a list"]),
    "set without =": ('base = "base.toml"\n[[variation]]\nlabel = "a"\nset = ["optim.lr"]\n',
                      ["variation[0].set: 'optim.lr': expected table.key=value"]),
    "unknown table in set": ('base = "base.toml"\n[[variation]]\nlabel = "a"\nset = ["modle.n_layer=3"]\n',
                             ["'modle.n_layer=3': modle: unknown table"]),
    "unknown config key": ('base = "base.toml"\n[[variation]]\nlabel = "a"\n[variation.model]\nn_layrs = 3\n',
                           ["label 'a'", "model.n_layrs = 3: unknown key"]),
    "override fails validation": ('base = "base.toml"' + ONE + '[[variation]]\nlabel = "bad"\nset = ["model.shift=[10,10]"]\n',
                                  ["variation[1] (label 'bad')", "model.shift = [10, 10]", "widths sum to 20"]),
    "grid member fails validation": (
        'base = "base.toml"\n[[grid]]\n[[grid.axis]]\nkey = "model.n_head"\nvalues = [2, 3]\n',
        ["grid[0] member '3'", "model.d_model = 32", "not divisible by model.n_head = 3"]),
    "grid without axes": ('base = "base.toml"\n[[grid]]\nlabel = "g"\n', ["grid[0].axis: missing"]),
    "axis with key and options": (
        'base = "base.toml"\n[[grid]]\n[[grid.axis]]\nkey = "optim.lr"\nvalues = [1]\noptions = [{label = "x"}]\n',
        ["grid[0].axis[0]: give either key + values (+ labels) or options"]),
    "axes set one key": (
        'base = "base.toml"\n[[grid]]\n[[grid.axis]]\nkey = "optim.lr"\nvalues = [1]\n'
        '[[grid.axis]]\noptions = [{label = "x", set = ["optim.lr=2"]}]\n',
        ["grid[0]: axes 0 and 1 both set optim.lr"]),
    "axis key not table.key": ('base = "base.toml"\n[[grid]]\n[[grid.axis]]\nkey = "lr"\nvalues = [1]\n',
                               ['grid[0].axis[0].key = "lr"', "expected table.key"]),
    "value without a safe label": ('base = "base.toml"\n[[grid]]\n[[grid.axis]]\nkey = "data.dataset"\nvalues = ["a b"]\n',
                                   ['grid[0].axis[0].values[0] = "a b"', "labels = [...]"]),
    "labels do not match values": (
        'base = "base.toml"\n[[grid]]\n[[grid.axis]]\nkey = "optim.lr"\nvalues = [1, 2]\nlabels = ["one"]\n',
        ['grid[0].axis[0].labels = ["one"]', "one string per value (2)"]),
    "empty grid label": ('base = "base.toml"\n[[grid]]\n[[grid.axis]]\nkey = "optim.lr"\nvalues = [1]\nlabels = [""]\n',
                         ["grid[0]: a combination has an empty label"]),
    "unknown reference": ('base = "base.toml"\nreference = "b"' + ONE, ['reference = "b": no member has this label']),
}


@pytest.mark.parametrize("case", BAD_SUITES)
def test_a_bad_suite_fails_with_one_line_naming_file_key_and_value(tmp_path, case):
    text, expected = BAD_SUITES[case]
    path = write_suite(tmp_path, text)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_missing_suite_file_and_cli_errors(tmp_path):
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "none.toml")
    path = write_suite(tmp_path, BAD_SUITES["duplicate label"][0])
    result = CliRunner().invoke(cli_app(), ["sweep", str(path), "--home", str(tmp_path / "home")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "error:" in result.output and "appears twice" in result.output


def cli_app():
    import cli

    return cli.app


# --- sweeping ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: a 32-wide model runs faster on one than on two shared cores."""
    threads, before = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if before is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = before


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A workspace with the tiny data set (200 rows of 33 tokens)."""
    home = tmp_path_factory.mktemp("home")
    build_tiny_dataset(home, tmp_path_factory.mktemp("corpus"), seq_len=SEQ_LEN, n_sequences=200, n_docs=12)
    return home


def interrupt_when(metrics: Path, step: int) -> threading.Thread:
    """Send this process SIGINT (as Ctrl-C would) once `metrics` has logged `step`."""
    def watch():
        deadline = time.time() + 120
        while time.time() < deadline:
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            if lines and json.loads(lines[-1])["step"] >= step:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def half_finished(home, tmp_path_factory) -> dict:
    """A sweep of one label, then a full sweep stopped by Ctrl-C in its third run, then the rest."""
    suite = load_suite(write_suite(tmp_path_factory.mktemp("suites"), TWO_BY_TWO, "half.toml"))
    lines: list[str] = []
    first = sweep(suite.members(only="plain"), home, log=lines.append)
    before = {m.run: (home / "runs" / m.run / "run.json").read_bytes() for m in suite.members(only="plain")}
    watcher = interrupt_when(home / "runs" / "half.shift.seed0" / "metrics.jsonl", step=3)
    stopped = sweep(suite.members(), home, log=lines.append)
    watcher.join(timeout=5)
    statuses_when_stopped = {m.run: member_status(home, m.run) for m in suite.members()}
    rest = sweep(suite.members(), home, log=lines.append)
    again = sweep(suite.members(), home, log=lines.append)
    return dict(suite=suite, first=first, stopped=stopped, rest=rest, again=again, before=before,
                statuses_when_stopped=statuses_when_stopped, lines=lines)


def test_a_resumed_sweep_trains_only_what_is_missing(home, half_finished):
    r = half_finished
    assert r["first"].trained == ["half.plain.seed0", "half.plain.seed1"]
    assert r["stopped"].already_finished == ["half.plain.seed0", "half.plain.seed1"]
    assert r["stopped"].stopped == "half.shift.seed0" and r["stopped"].trained == []
    assert r["statuses_when_stopped"] == {"half.plain.seed0": "finished", "half.plain.seed1": "finished",
                                          "half.shift.seed0": "running", "half.shift.seed1": "new"}
    # the next sweep resumes the interrupted run and starts the missing one; finished runs stay untouched
    assert r["rest"].already_finished == ["half.plain.seed0", "half.plain.seed1"]
    assert r["rest"].trained == ["half.shift.seed0", "half.shift.seed1"]
    assert r["again"].trained == [] and len(r["again"].already_finished) == 4 and r["again"].ok
    for run, content in r["before"].items():
        assert (home / "runs" / run / "run.json").read_bytes() == content
    info = json.loads((home / "runs" / "half.shift.seed0" / "run.json").read_text())
    assert info["status"] == "finished" and len(info["resumed_at"]) == 1
    assert not json.loads((home / "runs" / "half.shift.seed1" / "run.json").read_text())["resumed_at"]
    assert any(line.startswith("[3/4] half.shift.seed0: resuming") for line in r["lines"])
    assert any(line.startswith("[1/4] half.plain.seed0: finished already, skipped") for line in r["lines"])
    # every token of the interrupted run is in the loss table exactly once
    con = lossdb.connect(home)
    for run in ("half.shift.seed0", "half.shift.seed1"):
        n, distinct = con.sql(f"SELECT count(*), count(DISTINCT (seq, position)) FROM losses WHERE run = '{run}'").fetchall()[0]
        assert n == distinct == TOKENS


def test_dry_run_lists_status_parameters_and_tokens(home, half_finished):
    suite = half_finished["suite"]
    text = dry_run(suite, suite.members(seeds=3), home)
    cfg = load_config(home / "runs" / "half.shift.seed0" / "config.toml")  # resolved against the data set
    n_params = sum(p.numel() for p in build_model(cfg.model).parameters())
    row = next(line for line in text.splitlines() if "half.shift.seed2" in line).split()
    assert row[:3] == ["half.shift.seed2", "new", "102"]
    assert row[3] == f"{n_params:,}" and row[5] == f"{TOKENS:,}" and row[6] == "model.shift=[16,"
    assert next(line for line in text.splitlines() if "half.plain.seed0" in line).split()[1] == "finished"
    assert f"2 of 6 runs to train, {2 * TOKENS:,} tokens" in text


def test_run_lock_excludes_a_second_holder_and_never_goes_stale(tmp_path):
    first, second = RunLock(tmp_path, "r"), RunLock(tmp_path, "r")
    first.acquire()
    with pytest.raises(RunBusy, match=f"pid {os.getpid()}"):
        second.acquire()  # flock conflicts between open files, even in one process
    first.release()
    assert not first.path.exists()
    first.path.write_text("left behind by a killed process")  # a file alone holds nothing
    with second:
        assert json.loads(second.path.read_text())["pid"] == os.getpid()


def test_a_locked_run_is_left_to_its_holder(home, tmp_path):
    suite = load_suite(write_suite(tmp_path, TWO_BY_TWO, "locked.toml"))
    members = suite.members(seeds=1)
    lines: list[str] = []
    with RunLock(home, "locked.plain.seed0"):  # another sweep is training it
        report = sweep(members, home, log=lines.append)
    assert report.busy == ["locked.plain.seed0"] and report.trained == ["locked.shift.seed0"]
    assert member_status(home, "locked.plain.seed0") == "new"
    assert "busy, left to the process training it; locked by pid" in lines[0]
    assert sweep(members, home, log=lines.append).trained == ["locked.plain.seed0"]


def test_a_missing_data_set_stops_the_sweep_before_training(home, tmp_path):
    suite = load_suite(write_suite(tmp_path, TWO_BY_TWO, "nodata.toml"), ['data.dataset="absent"'])
    with pytest.raises(SuiteError, match="data set 'absent' not found"):
        sweep(suite.members(), home, log=lambda line: None)


# --- compare ---------------------------------------------------------------------------------------------


def direct_numbers(con, run: str, start: int, end: int, last: int) -> tuple[float, float]:
    """Mean loss over the steps whose first token lies in [start, end), and the word-start /
    sub-word loss ratio over the steps holding any of the last `last` tokens, straight from the
    `losses` and `vocab` views (every step trains TOKENS_PER_STEP tokens)."""
    (window,) = con.sql(
        f"""SELECT avg(CAST(loss AS DOUBLE)) FROM losses
            WHERE run = '{run}' AND step * {TOKENS_PER_STEP} >= {start} AND step * {TOKENS_PER_STEP} < {end}"""
    ).fetchall()[0]
    (ratio,) = con.sql(
        f"""SELECT avg(CASE WHEN v.is_word_start THEN CAST(l.loss AS DOUBLE) END)
                 / avg(CASE WHEN NOT v.is_word_start THEN CAST(l.loss AS DOUBLE) END)
            FROM losses AS l JOIN vocab AS v ON v.dataset = 'tiny' AND v.token_id = l.token_id
            WHERE l.run = '{run}' AND (l.step + 1) * {TOKENS_PER_STEP} > {TOKENS - last}"""
    ).fetchall()[0]
    return window, ratio


def test_compare_matches_sql_over_the_losses_view(home, half_finished):
    suite = half_finished["suite"]
    con = lossdb.connect(home)
    start, end, last = 5 * TOKENS_PER_STEP + 7, 30 * TOKENS_PER_STEP + 3, 3 * TOKENS_PER_STEP + 5  # not step-aligned
    entries = [cmp.Entry(*e) for e in suite_runs(suite, ["half.shift.seed7"])]  # a run not in the workspace
    result = cmp.compare(con, entries, windows=[(start, end)], last_tokens=last)
    assert result.missing == ["half.shift.seed7"] and result.reference == "plain"
    col = cmp.window_column(start, end)
    direct = {e.run: direct_numbers(con, e.run, start, end, last) for e in entries if e.run != "half.shift.seed7"}

    runs = result.table.filter(kind="run")
    assert runs["run"].to_list() == list(direct)
    for row in runs.iter_rows(named=True):
        assert row[col] == pytest.approx(direct[row["run"]][0], rel=1e-9)
        assert row["ratio"] == pytest.approx(direct[row["run"]][1], rel=1e-9)
        cfg = load_config(home / "runs" / row["run"] / "config.toml")
        assert row["n_params"] == sum(p.numel() for p in build_model(cfg.model).parameters())
        assert row["tokens_trained"] == TOKENS

    means = {row["label"]: row for row in result.table.filter(kind="mean").iter_rows(named=True)}
    assert list(means) == ["plain", "shift"]
    for label, row in means.items():
        losses = [direct[f"half.{label}.seed{k}"][0] for k in range(2)]
        ratios = [direct[f"half.{label}.seed{k}"][1] for k in range(2)]
        assert row["n_runs"] == 2
        assert row[col] == pytest.approx(np.mean(losses), rel=1e-9)
        assert row[f"{col}_std"] == pytest.approx(np.std(losses, ddof=1), rel=1e-6)
        assert row["ratio_std"] == pytest.approx(np.std(ratios, ddof=1), rel=1e-6)
    delta = np.mean([direct[f"half.shift.seed{k}"][0] for k in range(2)]) - np.mean(
        [direct[f"half.plain.seed{k}"][0] for k in range(2)])
    assert means["shift"][f"delta_{col}"] == pytest.approx(delta, rel=1e-6)
    assert means["plain"]["differs"] == "" and means["shift"]["differs"] == "model.shift=[16, 16]"


def test_compare_command_writes_table_and_chart(home, half_finished, tmp_path):
    suite_file = half_finished["suite"].path
    runner, app = CliRunner(), cli_app()
    window = f"{10 * TOKENS_PER_STEP}:{TOKENS}"
    md, csv, chart = tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "c.html"
    args = ["compare", "--suite", str(suite_file), "--window", window, "--last", "512", "--home", str(home)]
    result = runner.invoke(app, [*args, "--out-table", str(md), "--out-chart", str(chart)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, [*args, "--out-table", str(csv), "--out-chart", str(chart)]).exit_code == 0
    text = md.read_text()
    assert text.count("| half.") == 4 and text.count("mean ± std of 2") == 2 and "Δ vs plain" in text
    import polars as pl

    table = pl.read_csv(csv)
    con = lossdb.connect(home)
    col = cmp.window_column(10 * TOKENS_PER_STEP, TOKENS)
    for row in table.filter(kind="run").iter_rows(named=True):
        assert row[col] == pytest.approx(direct_numbers(con, row["run"], 10 * TOKENS_PER_STEP, TOKENS, 512)[0])
    page = chart.read_text()
    assert '"plain"' in page and '"shift"' in page and "half: learning curves" in page
    assert "Difference from plain" in page  # the panel of each label's curve minus the reference's

    # --runs: grouped by config, labelled by each group's first run
    result = runner.invoke(app, ["compare", "--runs", "half.plain.seed0,half.shift.seed0,half.plain.seed1",
                                 "--home", str(home), "--out-chart", str(chart)])
    assert result.exit_code == 0, result.output
    assert "| **half.plain.seed0** | mean ± std of 2 |" in result.output
    assert "differs from half.plain.seed0" in result.output
    # a run stands for its group's label; a reference without runs is named, not silently dropped
    by_run = runner.invoke(app, ["compare", "--runs", "half.shift.seed0,half.plain.seed0,half.plain.seed1",
                                 "--reference", "half.plain.seed1", "--home", str(home), "--out-chart", str(chart)])
    assert "Δ vs half.plain.seed0" in by_run.output
    unrun = runner.invoke(app, ["compare", "--suite", str(suite_file), "--reference", "later", "--home", str(home),
                                "--out-chart", str(chart)])
    assert "Δ vs" not in unrun.output and "No Δ column: the reference later has no recorded runs." in unrun.output
    bad = runner.invoke(app, ["compare", "--suite", str(suite_file), "--window", "5:1", "--home", str(home)])
    assert bad.exit_code == 2 and "--window 5:1" in bad.output


def test_chart_difference_panel_matches_losses(home, half_finished):
    """The lower panel: each label's seed-mean smoothed curve minus the reference label's, checked
    against per-step means from the `losses` view smoothed here with numpy."""
    suite = half_finished["suite"]
    con = lossdb.connect(home)
    entries = [cmp.Entry(*e) for e in suite_runs(suite, [])]
    chart = cmp.learning_chart_by_label(con, entries, smooth_tokens=3 * TOKENS_PER_STEP, reference="plain")
    spec = chart.to_dict()
    rows = next(data for data in spec["datasets"].values() if data and "difference" in data[0])
    got = {row["tokens"]: row["difference"] for row in rows if row["run"] == "shift"}

    def smoothed(run: str) -> np.ndarray:
        per_step = np.array([loss for (loss,) in con.sql(
            f"SELECT avg(CAST(loss AS DOUBLE)) FROM losses WHERE run = '{run}' GROUP BY step ORDER BY step").fetchall()])
        # trailing window of 3 steps, shorter at the start
        return np.array([per_step[max(0, i - 2): i + 1].mean() for i in range(len(per_step))])

    plain = np.mean([smoothed(f"half.plain.seed{k}") for k in range(2)], axis=0)
    shift = np.mean([smoothed(f"half.shift.seed{k}") for k in range(2)], axis=0)
    expected = {(i + 1) * TOKENS_PER_STEP: d for i, d in enumerate(shift - plain)}
    assert set(got) == set(expected)
    for tokens, difference in got.items():
        assert difference == pytest.approx(expected[tokens], abs=2e-5)  # chart data keeps 6 significant digits
