"""Every analysis against a slow, obvious computation (python loops over the stored rows).

The workspace is synthetic (lossdb.synthetic): every stored row is known as numpy columns, so
each expected curve is computed here from those rows alone, never from the views.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

import numpy as np
import polars as pl
import pytest

import lossdb
from analysis import curves, tables
from lossdb.synthetic import SyntheticDataset, SyntheticRun, make_workspace

SHIFT = {"model": {"shift": [16, 16]}}
RUNS = ["base", "base-s2", "base-gpu1", "shift", "shift-s3", "raw", "other"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return make_workspace(
        home,
        [SyntheticDataset(), SyntheticDataset(name="other-data", seq_len=12, vocab_size=30, seed=5)],
        [
            SyntheticRun("base"),
            SyntheticRun("base-s2", seed=2),
            # differs only in where it ran: the same config for grouping
            SyntheticRun("base-gpu1", seed=4, config={"train": {"device": "cuda:1"}}),
            SyntheticRun("shift", seed=1, quality=0.9, config=SHIFT),
            SyntheticRun("shift-s3", seed=3, quality=0.9, config=SHIFT),
            # no rollups: the views fall back to the raw table; two ranks, small parts
            SyntheticRun("raw", seed=7, rollups=False, ranks=2, batch_size=2, flush_every=3, quality=1.1),
            SyntheticRun("other", dataset="other-data", seed=9, steps=6, segment_tokens=100),
        ],
    )


@pytest.fixture(scope="module")
def con(ws):
    return lossdb.connect(ws.home)


# --- slow references -------------------------------------------------------------------------------


def dataset_of(ws, run):
    return ws.datasets[ws.run_json[run]["dataset"]]


def mean_by(keys, values):
    """{key: mean of values with that key}, by a python loop."""
    sums, counts = defaultdict(float), defaultdict(int)
    for key, value in zip(keys, values):
        sums[key] += float(value)
        counts[key] += 1
    return {key: sums[key] / counts[key] for key in sums}


def step_table(rows):
    """[(step, tokens before, tokens after, rows of that step)] in step order."""
    out, before = [], 0
    for step in sorted(set(rows.step.tolist())):
        index = np.flatnonzero(rows.step == step)
        out.append((step, before, before + len(index), index))
        before += len(index)
    return out


def frame_dict(df: pl.DataFrame, keys: list[str], value: str) -> dict:
    return {tuple(row[k] for k in keys): row[value] for row in df.iter_rows(named=True)}


def assert_same(actual: dict, expected: dict, rel=1e-9):
    assert set(actual) == set(expected)
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], rel=rel, abs=1e-12), key


# --- 1, 2: curves per segment ------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["base", "raw", "other"])
def test_position_curve_matches_loops(ws, con, run):
    rows = ws.runs[run]
    expected = mean_by(zip(rows.segment.tolist(), rows.position.tolist()), rows.loss)
    got = curves.position_curve(con, [run])
    assert set(got["run"]) == {run}
    assert_same(frame_dict(got, ["segment", "position"], "mean_loss"), expected)
    counts = defaultdict(int)
    for key in zip(rows.segment.tolist(), rows.position.tolist()):
        counts[key] += 1
    assert frame_dict(got, ["segment", "position"], "n") == counts


def test_position_curve_keeps_run_order_and_filters_segments(ws, con):
    got = curves.position_curve(con, ["shift", "base"], segments=[1])
    assert got["run"].unique(maintain_order=True).to_list() == ["shift", "base"]
    assert set(got["segment"]) == {1}
    rows = ws.runs["shift"]
    keep = rows.segment == 1
    expected = mean_by(rows.position[keep].tolist(), rows.loss[keep])
    assert_same(frame_dict(got.filter(pl.col("run") == "shift"), ["position"], "mean_loss"), {(k,): v for k, v in expected.items()})


@pytest.mark.parametrize("run", ["base", "raw", "other"])
def test_bucket_curve_matches_loops(ws, con, run):
    rows = ws.runs[run]
    bucket_of = dataset_of(ws, run).column("bucket")
    keys = [(int(s), int(bucket_of[t])) for s, t in zip(rows.segment, rows.token_id)]
    expected = mean_by(keys, rows.loss)
    got = curves.bucket_curve(con, [run])
    assert_same(frame_dict(got, ["segment", "bucket"], "mean_loss"), expected)


# --- 3: relative to a baseline -------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["position", "bucket"])
def test_relative_curve_ratio_and_difference(ws, con, by):
    def curve(run):
        rows = ws.runs[run]
        x = rows.position if by == "position" else dataset_of(ws, run).column("bucket")[rows.token_id]
        return mean_by(zip(rows.segment.tolist(), x.tolist()), rows.loss)

    base, shift = curve("base"), curve("shift")
    got = curves.relative_curve(con, ["base", "shift"], "base", by=by)
    assert set(got["run"]) == {"shift"}  # the baseline against itself is left out
    assert set(got["baseline"]) == {"base"}
    keys = set(base) & set(shift)
    assert_same(frame_dict(got, ["segment", by], "ratio"), {k: shift[k] / base[k] for k in keys})
    assert_same(frame_dict(got, ["segment", by], "difference"), {k: shift[k] - base[k] for k in keys})
    assert_same(frame_dict(got, ["segment", by], "baseline_loss"), {k: base[k] for k in keys})


def test_relative_curve_normalization_identities(con):
    got = curves.relative_curve(con, ["shift", "raw"], "base")
    assert np.allclose(got["ratio"] * got["baseline_loss"], got["mean_loss"], rtol=1e-12)
    assert np.allclose(got["difference"] + got["baseline_loss"], got["mean_loss"], rtol=1e-12)
    # quality 0.9 vs 1.0: shift's loss is ~0.9 of the baseline's on average
    assert got.filter(pl.col("run") == "shift")["ratio"].mean() == pytest.approx(0.9, abs=0.05)
    alone = curves.relative_curve(con, ["base"], "base")
    assert set(alone["ratio"]) == {1.0} and set(alone["difference"]) == {0.0}


def test_relative_curve_rejects_unknown_kind_and_baseline(con):
    with pytest.raises(ValueError, match="by must be one of"):
        curves.relative_curve(con, ["base"], "base", by="token")
    with pytest.raises(curves.UnknownRunError, match="nope"):
        curves.relative_curve(con, ["base"], "nope")


# --- 4: first positions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("segments", [None, [0, 2]])
def test_first_positions_min_max_and_word_start_share(ws, con, segments):
    n_positions = 10
    got = curves.first_positions(con, ["shift", "base"], n_positions=n_positions, segments=segments)
    assert got["run"].unique(maintain_order=True).to_list() == ["shift", "base"]
    for run in ("shift", "base"):
        rows = ws.runs[run]
        keep = rows.position < n_positions
        if segments is not None:
            keep &= np.isin(rows.segment, segments)
        loss = mean_by(rows.position[keep].tolist(), rows.loss[keep])
        low, high = min(loss.values()), max(loss.values())
        word_start = dataset_of(ws, run).column("is_word_start")
        share = mean_by(rows.position[keep].tolist(), word_start[rows.token_id[keep]].astype(float))
        mine = got.filter(pl.col("run") == run)
        assert mine["position"].to_list() == list(range(n_positions))
        for row in mine.iter_rows(named=True):
            p = row["position"]
            assert row["mean_loss"] == pytest.approx(loss[p], rel=1e-9)
            assert row["normalized_loss"] == pytest.approx((loss[p] - low) / (high - low), rel=1e-9, abs=1e-12)
            assert row["word_start_share"] == pytest.approx(share[p], rel=1e-12)
        assert mine["normalized_loss"].min() == 0.0 and mine["normalized_loss"].max() == pytest.approx(1.0)


def test_first_positions_needs_two_positions(con):
    with pytest.raises(ValueError, match="at least 2"):
        curves.first_positions(con, ["base"], n_positions=1)


# --- 5: learning curves -------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["base", "raw"])
@pytest.mark.parametrize("window, start", [(0, 0), (1, 0), (128, 0), (150, 0), (300, 200)])
def test_learning_curves_smoothing_matches_loops(ws, con, run, window, start):
    rows = ws.runs[run]
    steps = step_table(rows)  # tokens per step: 64 for every run here
    expected = {}
    for _, _, after, index in steps:
        if after < start:
            continue
        # trailing window (after - window, after]; no smoothing when window is 0
        inside = [(a, i) for _, _, a, i in steps if (after - window < a <= after) or a == after]
        total = sum(float(rows.loss[i].astype(np.float64).sum()) for _, i in inside)
        count = sum(len(i) for _, i in inside)
        expected[(after,)] = (float(rows.loss[index].astype(np.float64).mean()), total / count)
    got = curves.learning_curves(con, [run], window_tokens=window, start_tokens=start)
    assert got["tokens"].to_list() == sorted(k[0] for k in expected)
    assert_same(frame_dict(got, ["tokens"], "mean_loss"), {k: v[0] for k, v in expected.items()})
    assert_same(frame_dict(got, ["tokens"], "smoothed_loss"), {k: v[1] for k, v in expected.items()})


def test_learning_curves_end_and_bad_window(con):
    got = curves.learning_curves(con, ["base", "shift"], end_tokens=256)
    assert got["tokens"].max() == 256 and set(got["run"]) == {"base", "shift"}
    with pytest.raises(ValueError, match=">= 0"):
        curves.learning_curves(con, ["base"], window_tokens=-1)


# --- 6: tables ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start, end", [(128, 384), (100, 200), (0, 10**9), (448, 449)])
def test_window_loss_matches_loops(ws, con, start, end):
    got = tables.window_loss(con, ["base", "raw", "other"], start, end)
    assert got["run"].to_list() == ["base", "raw", "other"]
    for run in ("base", "raw", "other"):
        rows = ws.runs[run]
        chosen = [i for _, before, _, i in step_table(rows) if start <= before < end]
        row = got.filter(pl.col("run") == run).row(0, named=True)
        if not chosen:
            assert row["n_tokens"] == 0 and row["mean_loss"] is None
            continue
        index = np.concatenate(chosen)
        assert row["n_tokens"] == len(index)
        assert row["mean_loss"] == pytest.approx(float(rows.loss[index].astype(np.float64).mean()), rel=1e-9)


def test_window_loss_rejects_empty_window(con):
    with pytest.raises(ValueError, match="start_tokens < end_tokens"):
        tables.window_loss(con, ["base"], 10, 10)


@pytest.mark.parametrize("last", [1, 64, 100, 10**9])
def test_word_start_ratio_matches_loops(ws, con, last):
    got = tables.word_start_ratio(con, ["base", "raw", "other"], last)
    for run in ("base", "raw", "other"):
        rows = ws.runs[run]
        steps = step_table(rows)
        total = steps[-1][2]
        index = np.concatenate([i for _, _, after, i in steps if after > total - last])
        word_start = dataset_of(ws, run).column("is_word_start")[rows.token_id[index]]
        loss = rows.loss[index].astype(np.float64)
        ws_loss, sw_loss = loss[word_start].mean(), loss[~word_start].mean()
        row = got.filter(pl.col("run") == run).row(0, named=True)
        assert row["n_word_start"] == int(word_start.sum()) and row["n_subword"] == int((~word_start).sum())
        assert row["word_start_loss"] == pytest.approx(ws_loss, rel=1e-9)
        assert row["subword_loss"] == pytest.approx(sw_loss, rel=1e-9)
        assert row["ratio"] == pytest.approx(ws_loss / sw_loss, rel=1e-9)


def test_word_starts_are_harder_in_the_synthetic_model(con):
    # the synthetic loss multiplies word starts by 1.15 (and rare tokens by more): ratio > 1
    got = tables.word_start_ratio(con, ["base", "shift"], 10**9)
    assert (got["ratio"] > 1.0).all()


def test_config_groups_set_the_seed_and_device_aside(con):
    got = tables.config_groups(con, ["base", "base-s2", "base-gpu1", "shift", "shift-s3", "other"], reference="base")
    group = dict(zip(got["run"], got["group"]))
    assert group["base"] == group["base-s2"] == group["base-gpu1"] == "base config"
    assert group["shift"] == group["shift-s3"] == "model.shift=[16, 16]"
    assert group["other"] not in (group["base"], group["shift"])
    assert "data.dataset" in group["other"]
    assert dict(zip(got["run"], got["seed"]))["shift-s3"] == 3


def test_summarize_by_config_mean_and_sample_std(con):
    runs = ["base", "base-s2", "base-gpu1", "shift", "shift-s3", "other"]
    per_run = tables.window_loss(con, runs, 128, 512)
    groups = tables.config_groups(con, runs)
    got = tables.summarize_by_config(per_run, groups, "mean_loss")
    value = dict(zip(per_run["run"], per_run["mean_loss"]))
    members = {"base config": ["base", "base-s2", "base-gpu1"], "model.shift=[16, 16]": ["shift", "shift-s3"]}
    for name, runs_in in members.items():
        row = got.filter(pl.col("group") == name).row(0, named=True)
        values = [value[r] for r in runs_in]
        assert row["n_runs"] == len(runs_in) and row["runs"] == ", ".join(runs_in)
        assert row["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
        assert row["std"] == pytest.approx(statistics.stdev(values), rel=1e-9)  # sample std, n - 1
    single = got.filter(pl.col("runs") == "other").row(0, named=True)
    assert single["n_runs"] == 1 and single["std"] is None and single["mean"] == pytest.approx(value["other"])


def test_summarize_by_config_skips_runs_without_a_value():
    per_run = pl.DataFrame({"run": ["a", "b", "c"], "mean_loss": [1.0, None, 3.0]})
    groups = pl.DataFrame({"run": ["a", "b", "c"], "seed": [0, 1, 2], "group": ["g", "g", "g"]})
    row = tables.summarize_by_config(per_run, groups, "mean_loss").row(0, named=True)
    assert row["n_runs"] == 2 and row["mean"] == 2.0 and row["std"] == pytest.approx(math.sqrt(2))


def test_config_differences_list_every_changed_key(con):
    got = tables.config_differences(con, ["base", "shift", "base-gpu1"], "base")
    pairs = {(r["run"], r["key"]): (r["baseline_value"], r["value"]) for r in got.iter_rows(named=True)}
    assert pairs == {
        ("shift", "model.shift"): ("(absent)", "[16, 16]"),
        ("shift", "train.seed"): ("0", "1"),
        ("base-gpu1", "train.device"): ("(absent)", '"cuda:1"'),
        ("base-gpu1", "train.seed"): ("0", "4"),
    }


def test_flatten_nested_config():
    assert tables.flatten({"model": {"n_layer": 2, "layers": [{"every": 2}]}, "train": {"seed": 1}}) == {
        "model.n_layer": 2,
        "model.layers": [{"every": 2}],
        "train.seed": 1,
    }


# --- run names ------------------------------------------------------------------------------------------------


def test_unknown_runs_are_one_clear_line(con):
    with pytest.raises(curves.UnknownRunError) as err:
        curves.position_curve(con, ["base", "nope", "also-nope"])
    message = str(err.value)
    assert "\n" not in message
    assert "nope, also-nope" in message and "known runs: base, base-gpu1, base-s2" in message


def test_runs_may_be_a_comma_separated_string(con):
    assert curves.check_runs(con, "shift, base,shift") == ["shift", "base"]
    with pytest.raises(curves.UnknownRunError, match="no runs given"):
        curves.check_runs(con, " , ")
