"""`cli.py sql`, `cli.py lossdb rollup` and `cli.py lossdb file` through typer's CliRunner."""

from __future__ import annotations

import csv
import io
import json

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import lossdb
from cli import app
from lossdb.synthetic import SyntheticDataset, SyntheticRun, make_workspace

runner = CliRunner()
QUERY = "SELECT run, segment, position, mean_loss, n FROM position_curve ORDER BY ALL"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("ws")
    make_workspace(home, [SyntheticDataset()], [SyntheticRun("base", steps=4), SyntheticRun("123", steps=4, seed=1)])
    return home


def sql(home, *args):
    return runner.invoke(app, ["sql", *args, "--home", str(home)])


def expected(home, query=QUERY):
    return lossdb.connect(home).sql(query).fetchall()


def test_table_output(home):
    result = sql(home, "SELECT run, count(*) AS tokens FROM losses GROUP BY run ORDER BY run")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "│" in line and ("base" in line or "123" in line)]
    assert [[cell.strip() for cell in line.split("│")[1:3]] for line in lines] == [["123", "256"], ["base", "256"]]


def test_table_output_is_cut_at_max_rows(home):
    result = sql(home, QUERY, "--max-rows", "3")
    assert result.exit_code == 0
    assert "3 of 64 rows shown" in result.stderr


def test_csv_output(home):
    result = sql(home, QUERY, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["run", "segment", "position", "mean_loss", "n"]
    want = expected(home)
    assert [(r[0], int(r[1]), int(r[2]), float(r[3]), int(r[4])) for r in rows[1:]] == want


def test_json_output_nests_json_columns(home):
    result = sql(home, "SELECT run, config, seed FROM runs ORDER BY run", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["run"] for r in rows] == ["123", "base"]  # a run named "123" stays text
    assert rows[0]["config"]["model"]["n_layer"] == 2 and rows[0]["seed"] == 1


def test_parquet_output_format_from_suffix(home, tmp_path):
    out = tmp_path / "curve.parquet"
    result = sql(home, QUERY, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert [tuple(r.values()) for r in pq.read_table(out).to_pylist()] == expected(home)
    assert "wrote 64 rows" in result.stderr


def test_csv_to_file(home, tmp_path):
    out = tmp_path / "curve.txt"
    result = sql(home, QUERY, "--format", "csv", "--out", str(out))
    assert result.exit_code == 0
    assert len(out.read_text().splitlines()) == 65


@pytest.mark.parametrize(
    "query, message",
    [
        ("SELECT * FROM no_such_view", "error: Catalog Error: Table with name no_such_view does not exist!"),
        ("SELEC 1", "error: Parser Error: syntax error at or near"),
        ("SELECT 1 +", "error: Parser Error"),
    ],
)
def test_sql_errors_print_duckdbs_message_on_one_line(home, query, message):
    result = sql(home, query)
    assert result.exit_code != 0
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_writes_are_refused(home, tmp_path):
    target = tmp_path / "copy.csv"
    for query in [f"COPY (SELECT 1) TO '{target}'", "CREATE TABLE t AS SELECT 1", "SELECT 1; SELECT 2"]:
        result = sql(home, query)
        assert result.exit_code != 0, query
        assert result.stderr.startswith("error: ")
    assert not target.exists()


def test_bad_format_arguments(home):
    assert "needs --out" in sql(home, "SELECT 1", "--format", "parquet").stderr
    result = sql(home, "SELECT 1", "--format", "xml")
    assert result.exit_code != 0 and "unknown format 'xml'" in result.stderr


def test_lossdb_rollup_builds_missing_rollups(tmp_path):
    make_workspace(tmp_path, [SyntheticDataset()], [SyntheticRun("raw", steps=4, rollups=False, flush_every=2)])
    before = lossdb.connect(tmp_path).sql(QUERY).fetchall()
    result = runner.invoke(app, ["lossdb", "rollup", "--runs", "raw", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "built rollups for 2 of 2 part files (runs: raw)" in result.stdout
    assert len(list((tmp_path / "lossdb/rollups").rglob("part-*.parquet"))) == 6
    assert lossdb.connect(tmp_path).sql(QUERY).fetchall() == before  # float16 sums are exact here
    again = runner.invoke(app, ["lossdb", "rollup", "--home", str(tmp_path)])
    assert "built rollups for 0 of 2" in again.stdout
    missing = runner.invoke(app, ["lossdb", "rollup", "--runs", "nope", "--home", str(tmp_path)])
    assert missing.exit_code != 0 and "'nope' has no part files" in missing.stderr


def test_lossdb_file(home, tmp_path):
    out = tmp_path / "views.duckdb"
    result = runner.invoke(app, ["lossdb", "file", str(out), "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert duckdb.connect(str(out), read_only=True).sql(QUERY).fetchall() == expected(home)
    again = runner.invoke(app, ["lossdb", "file", str(out), "--home", str(home)])
    assert again.exit_code != 0 and "exists" in again.stderr
    assert runner.invoke(app, ["lossdb", "file", str(out), "--force", "--home", str(home)]).exit_code == 0
