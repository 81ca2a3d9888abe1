"""The DuckDB views, each checked against plain-Python sums over the rows a synthetic workspace stored."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import lossdb
from lossdb.rollup import rollup_paths
from lossdb.schema import ROLLUP_KINDS, temp_name
from lossdb.synthetic import SyntheticDataset, SyntheticRun, make_workspace
from lossdb.writer import LossWriter

DATASETS = [
    SyntheticDataset("synth", n_sequences=64, seq_len=16, vocab_size=40),
    SyntheticDataset("other", n_sequences=32, seq_len=8, vocab_size=25, seed=1),
]
RUNS = [
    SyntheticRun("base", steps=8, batch_size=4, flush_every=3),  # rollups, several parts per segment
    SyntheticRun("shift", quality=0.9, ranks=2, steps=4, batch_size=4, rollups=False, seed=1),  # raw only
    SyntheticRun("123", dataset="other", steps=6, batch_size=4, segment_tokens=64, seed=2),  # text, other vocab
    SyntheticRun("mixed", steps=8, batch_size=4, flush_every=2, seed=3, status="running"),  # some rollups lost
    SyntheticRun("nojson", steps=2, batch_size=4, seed=4),  # run.json missing: no data set known
]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    home = tmp_path_factory.mktemp("ws")
    workspace = make_workspace(home, DATASETS, RUNS)
    (home / "runs/nojson/run.json").unlink()
    for kind in ROLLUP_KINDS:  # "mixed": the first part has no rollups -> its raw rows are used
        rollup_paths(home / "lossdb", "mixed", 0, 0, 0)[kind].unlink()
    torn = home / "lossdb/losses/run=base/segment=0" / temp_name("part-0-999.parquet", "1")
    torn.write_bytes(b"PAR1 torn")  # a crashed write: never matched
    return workspace


@pytest.fixture(scope="module")
def con(ws):
    return lossdb.connect(ws.home)


def rows_of(ws, run):
    r = ws.runs[run]
    return list(zip(r.segment.tolist(), r.step.tolist(), r.position.tolist(), r.token_id.tolist(), r.loss.tolist()))


def fetch(con, sql):
    relation = con.sql(sql)
    return [dict(zip(relation.columns, row)) for row in relation.fetchall()]


def means(sums):
    return {key: (total / n, n) for key, (total, n) in sums.items()}


def expected_position_curve(ws):
    sums = defaultdict(lambda: [0.0, 0])
    for run in ws.runs:
        for segment, _, position, _, loss in rows_of(ws, run):
            sums[run, segment, position][0] += loss
            sums[run, segment, position][1] += 1
    return means(sums)


def expected_bucket_curve(ws):
    sums = defaultdict(lambda: [0.0, 0])
    for run in ws.runs:
        info = ws.run_json[run] if run != "nojson" else None
        vocab = ws.datasets[info["dataset"]].vocab if info else None
        bucket = dict(zip(vocab["token_id"].to_pylist(), vocab["bucket"].to_pylist())) if info else {}
        for segment, _, _, token, loss in rows_of(ws, run):
            key = (run, segment, bucket.get(token))
            sums[key][0] += loss
            sums[key][1] += 1
    return means(sums)


def expected_learning_curve(ws):
    curve = {}
    for run in ws.runs:
        per_step = defaultdict(lambda: [0.0, 0])
        for _, step, _, _, loss in rows_of(ws, run):
            per_step[step][0] += loss
            per_step[step][1] += 1
        tokens = 0
        for step in sorted(per_step):
            tokens += per_step[step][1]
            curve[run, tokens] = per_step[step][0] / per_step[step][1]
    return curve


def assert_curve(got: dict, expected: dict):
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def position_curve(con):
    return {(r["run"], r["segment"], r["position"]): (r["mean_loss"], r["n"]) for r in fetch(con, "SELECT * FROM position_curve")}


def bucket_curve(con):
    return {(r["run"], r["segment"], r["bucket"]): (r["mean_loss"], r["n"]) for r in fetch(con, "SELECT * FROM bucket_curve")}


def learning_curve(con):
    return {(r["run"], r["tokens"]): r["mean_loss"] for r in fetch(con, "SELECT * FROM learning_curve")}


# --- losses, runs, vocab -------------------------------------------------------------------------


def test_losses_view_types_and_rows(ws, con):
    types = {name: kind for name, kind, *_ in con.sql("DESCRIBE losses").fetchall()}
    assert types == {"step": "INTEGER", "seq": "BIGINT", "position": "SMALLINT", "token_id": "INTEGER",
                     "loss": "FLOAT", "run": "VARCHAR", "segment": "INTEGER"}
    for run in ws.runs:
        r = ws.runs[run]
        expected = sorted(zip(r.step.tolist(), r.seq.tolist(), r.position.tolist(), r.token_id.tolist(),
                              r.loss.tolist(), r.segment.tolist()))
        got = con.sql(f"SELECT step, seq, position, token_id, loss, segment FROM losses WHERE run = '{run}' ORDER BY ALL").fetchall()
        assert got == expected, run
    # the torn temp file is not matched, and "123" stays text
    assert con.sql("SELECT count(*) FROM losses").fetchall()[0][0] == sum(len(r.loss) for r in ws.runs.values())
    assert con.sql("SELECT DISTINCT typeof(run) FROM losses WHERE run = '123'").fetchall() == [("VARCHAR",)]


def test_runs_view(ws, con):
    got = {r["run"]: r for r in fetch(con, "SELECT *, config ->> '$.model.n_layer' AS n_layer, typeof(started_at) AS t FROM runs")}
    assert set(got) == set(ws.run_json) - {"nojson"}
    for run, info in ws.run_json.items():
        if run == "nojson":
            continue
        row = got[run]
        for key in ["status", "dataset", "dataset_sha256", "seed", "tokens_trained", "n_params", "n_params_non_embedding"]:
            assert row[key] == info[key], (run, key)
        assert json.loads(row["config"]) == info["config"]
        assert row["n_layer"] == str(info["config"]["model"]["n_layer"])
        assert row["started_at"].isoformat() == info["started_at"]
        assert row["t"] == "TIMESTAMP WITH TIME ZONE"
    assert got["mixed"]["status"] == "running" and got["mixed"]["finished_at"] is None


def test_vocab_view(ws, con):
    for name, data in ws.datasets.items():
        got = con.sql(f"SELECT token_id, text, count, rank, bucket, is_word_start FROM vocab WHERE dataset = '{name}' ORDER BY token_id").fetchall()
        assert got == [tuple(r.values()) for r in data.vocab.to_pylist()]


# --- curves --------------------------------------------------------------------------------------


def test_position_curve(ws, con):
    assert_curve(position_curve(con), expected_position_curve(ws))


def test_bucket_curve(ws, con):
    expected = expected_bucket_curve(ws)
    assert any(key[0] == "nojson" and key[2] is None for key in expected)  # no run.json: NULL bucket
    assert_curve(bucket_curve(con), expected)


def test_learning_curve(ws, con):
    expected = expected_learning_curve(ws)
    assert ("shift", 128) in expected  # two ranks x 4 sequences x 16 tokens in the first step
    assert_curve(learning_curve(con), expected)


def test_rollups_equal_raw_table(ws, con, tmp_path):
    raw_only = tmp_path / "raw"
    shutil.copytree(ws.home, raw_only, ignore=shutil.ignore_patterns("rollups"))
    raw = lossdb.connect(raw_only)
    assert not (raw_only / "lossdb/rollups").exists()
    for curve in (position_curve, bucket_curve, learning_curve):
        assert_curve(curve(con), curve(raw))


def test_views_read_the_rollups_when_a_part_has_them(ws, tmp_path):
    home = tmp_path / "copy"
    shutil.copytree(ws.home, home)
    path = rollup_paths(home / "lossdb", "base", 0, 0, 0)["position"]
    table = pq.read_table(path).to_pydict()
    table["loss_sum"][0] += 1000.0  # a deliberately wrong rollup must show up in the curve
    pq.write_table(pq.read_table(path).from_pydict(table, schema=pq.read_schema(path)), path)
    position = table["position"][0]
    before = position_curve(lossdb.connect(ws.home))[("base", 0, position)]
    after = position_curve(lossdb.connect(home))[("base", 0, position)]
    assert after[0] == pytest.approx(before[0] + 1000.0 / before[1])


# --- relative curves -----------------------------------------------------------------------------


@pytest.mark.parametrize("curve, macro", [(position_curve, "relative_position_curve"), (bucket_curve, "relative_bucket_curve")])
def test_relative_curves(con, curve, macro):
    values = curve(con)
    expected = {}
    for (run, segment, x), (mean, _) in values.items():
        base = values.get(("base", segment, x))
        if base is not None and x is not None:
            expected[run, segment, x] = (mean, base[0], mean / base[0], mean - base[0])
    got = {(r["run"], r["segment"], r["x"]): (r["mean_loss"], r["baseline_loss"], r["ratio"], r["difference"])
           for r in fetch(con, f"SELECT * FROM {macro}('base')")}
    assert_curve(got, expected)
    assert all(v[2] == 1.0 for k, v in got.items() if k[0] == "base")
    assert {k[0] for k in got} >= {"base", "shift", "mixed"}
    assert fetch(con, f"SELECT * FROM {macro}('no-such-run')") == []


def test_relative_learning_curve_matches_the_last_baseline_point_at_or_before(con):
    values = learning_curve(con)
    base = sorted((tokens, mean) for (run, tokens), mean in values.items() if run == "base")
    expected = {}
    for (run, tokens), mean in values.items():
        earlier = [m for t, m in base if t <= tokens]
        if earlier:
            expected[run, tokens] = (mean, earlier[-1], mean / earlier[-1], mean - earlier[-1])
    got = {(r["run"], r["tokens"]): (r["mean_loss"], r["baseline_loss"], r["ratio"], r["difference"])
           for r in fetch(con, "SELECT * FROM relative_learning_curve('base')")}
    assert any(run == "shift" for run, _ in got)  # 128 tokens per step against the baseline's 64
    assert_curve(got, expected)


# --- workspaces with nothing in them yet -----------------------------------------------------------

VIEW_COLUMNS = {
    "losses": ["step", "seq", "position", "token_id", "loss", "run", "segment"],
    "runs": ["run", "status", "dataset", "dataset_sha256", "seed", "tokens_trained", "n_params",
             "n_params_non_embedding", "config", "started_at", "finished_at", "run_json"],
    "vocab": ["dataset", "token_id", "text", "count", "rank", "bucket", "is_word_start"],
    "position_curve": ["run", "segment", "position", "mean_loss", "n"],
    "bucket_curve": ["run", "segment", "bucket", "mean_loss", "n"],
    "learning_curve": ["run", "tokens", "mean_loss"],
    "relative_position_curve('a')": ["run", "segment", "x", "mean_loss", "baseline_loss", "ratio", "difference"],
    "relative_bucket_curve('a')": ["run", "segment", "x", "mean_loss", "baseline_loss", "ratio", "difference"],
    "relative_learning_curve('a')": ["run", "tokens", "mean_loss", "baseline_loss", "ratio", "difference"],
}


def test_empty_workspace_gives_empty_views(tmp_path):
    con = lossdb.connect(tmp_path / "does-not-exist-yet")
    for view, columns in VIEW_COLUMNS.items():
        relation = con.sql(f"SELECT * FROM {view}")
        assert relation.columns == columns, view
        assert relation.fetchall() == [], view


def test_runs_without_losses_yet(tmp_path):
    make_workspace(tmp_path, [SyntheticDataset()], [])
    (tmp_path / "runs/fresh").mkdir(parents=True)
    (tmp_path / "runs/fresh/run.json").write_text(json.dumps({"run": "fresh", "status": "running", "dataset": "synth"}))
    con = lossdb.connect(tmp_path)
    assert con.sql("SELECT run, status, tokens_trained FROM runs").fetchall() == [("fresh", "running", None)]
    for view in ["losses", "position_curve", "bucket_curve", "learning_curve"]:
        assert con.sql(f"SELECT * FROM {view}").fetchall() == []


def test_a_broken_run_json_gives_a_row_of_nulls(tmp_path):
    for run, text in [("good", json.dumps({"run": "good", "seed": 3})), ("torn", '{"run": "torn", "se'), ("empty", "")]:
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "run.json").write_text(text)
    got = lossdb.connect(tmp_path).sql("SELECT run, seed, run_json IS NULL FROM runs ORDER BY run").fetchall()
    assert got == [("empty", None, True), ("good", 3, False), ("torn", None, True)]


def test_parts_written_after_connect_are_visible(tmp_path):
    with LossWriter(tmp_path / "lossdb", "live") as writer:
        writer.write(0, 0, [1], [[1, 2]], [[1.0, 2.0]])
    con = lossdb.connect(tmp_path)
    with LossWriter(tmp_path / "lossdb", "live") as writer:
        writer.write(1, 0, [2], [[1, 2]], [[3.0, 4.0]])
    assert con.sql("SELECT count(*) FROM losses").fetchall() == [(4,)]
    assert con.sql("SELECT position, mean_loss FROM position_curve").fetchall() == [(0, 2.0), (1, 3.0)]


# --- connections and database files ------------------------------------------------------------------


def test_connection_is_read_only_unless_asked(ws):
    con = lossdb.connect(ws.home)
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("CREATE TABLE t AS SELECT 1")
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DROP VIEW losses")
    con.execute("CREATE TEMP TABLE t AS SELECT 1 AS x")  # scratch work still possible
    writable = lossdb.connect(ws.home, read_only=False)
    writable.execute("CREATE TABLE t AS SELECT 1 AS x")


def test_database_file_works_from_another_directory(ws, tmp_path, monkeypatch):
    out = lossdb.write_database_file(ws.home, tmp_path / "views.duckdb")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    con = duckdb.connect(str(out), read_only=True)
    assert con.sql("SELECT count(*) FROM losses").fetchall()[0][0] == sum(len(r.loss) for r in ws.runs.values())
    assert_curve(position_curve(con), expected_position_curve(ws))
    assert con.sql("SELECT count(*) FROM relative_position_curve('base')").fetchall()[0][0] > 0


def test_check_read_query(con):
    lossdb.check_read_query(con, "WITH a AS (SELECT 1) SELECT * FROM a")
    lossdb.check_read_query(con, "DESCRIBE losses")
    for bad, message in [("COPY losses TO 'x.csv'", "got COPY"), ("SELECT 1; SELECT 2", "exactly one"),
                         ("CREATE TABLE t AS SELECT 1", "got CREATE"), ("SET threads = 1", "got SET")]:
        with pytest.raises(ValueError, match=message):
            lossdb.check_read_query(con, bad)


def test_synthetic_quality_shows_as_the_ratio_to_the_baseline(ws, con):
    # "shift" has quality 0.9, noise aside: the mean ratio over all points is close to 0.9.
    ratios = [r[0] for r in con.sql("SELECT ratio FROM relative_position_curve('base') WHERE run = 'shift'").fetchall()]
    assert np.mean(ratios) == pytest.approx(0.9, abs=0.05)
