"""Releases (`lossdb/export.py`, `cli.py export`): export, verify, and loading with datasets, DuckDB and polars.

Every expected number comes from the rows the synthetic workspace stored (`SyntheticWorkspace.runs`),
never from the export's own output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

import lossdb
from cli import app
from lossdb.export import (
    RELEASE_SCHEMA,
    ExportError,
    export_release,
    verify_release,
    write_sums,
)
from lossdb.synthetic import SyntheticDataset, SyntheticRun, make_workspace

DATASETS = [
    SyntheticDataset("synth", n_sequences=64, seq_len=16, vocab_size=40),
    SyntheticDataset("other", n_sequences=32, seq_len=8, vocab_size=25, seed=1),
]
RUNS = [
    SyntheticRun("base", steps=8, batch_size=4, flush_every=3, config={"model": {"n_layer": 4}}),
    SyntheticRun("123", steps=4, batch_size=4, ranks=2, seed=1, rollups=False),  # a run named like a number
    SyntheticRun("v1.2+rope", dataset="other", steps=6, batch_size=4, segment_tokens=64, seed=2, status="failed"),
    SyntheticRun("busy", steps=2, batch_size=4, seed=3, status="running"),
]
EXPORTED = ["base", "123", "v1.2+rope"]
SMALL = dict(max_shard_bytes=2_000, row_group_rows=48, progress=False)  # several shards per run
COLUMNS = ["step", "seq", "position", "token_id", "loss", "segment"]
runner = CliRunner()


def add_dataset_files(home: Path, ws) -> None:
    """What `data build` leaves besides vocab.parquet: manifest.json (sha256 of the tokens) and tokenizer/."""
    for name, data in ws.datasets.items():
        folder = home / "data" / name
        manifest = {"name": name, "seq_len": data.spec.seq_len, "vocab_size": data.spec.vocab_size,
                    "sha256": hashlib.sha256(data.tokens.tobytes()).hexdigest()}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "info.json").write_text(json.dumps({"kind": "bpe", "file": "tokenizer.json"}))
        (folder / "tokenizer" / "tokenizer.json").write_text('{"model": "synthetic"}')


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    home = tmp_path_factory.mktemp("ws")
    workspace = make_workspace(home, DATASETS, RUNS)
    add_dataset_files(home, workspace)
    return workspace


@pytest.fixture(scope="module")
def release(ws, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "release"
    result = export_release(ws.home, EXPORTED, out, name="synthetic losses", **SMALL)
    return result


@pytest.fixture
def copy_of(release, tmp_path):
    """A fresh copy of the release to damage."""
    target = tmp_path / "release"
    shutil.copytree(release.out, target)
    return target


@pytest.fixture(scope="module")
def hf_offline(tmp_path_factory):
    """datasets and huggingface_hub offline, with their caches in a temp folder."""
    import datasets
    import huggingface_hub.constants

    cache = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            mp.setenv(key, "1")
        mp.setenv("HF_HOME", str(cache))
        mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield cache / "datasets"


def source_rows(ws, run) -> dict[str, np.ndarray]:
    """The run's stored rows sorted by (seq, position)."""
    r = ws.runs[run]
    order = np.lexsort((r.position, r.seq))
    return {c: np.asarray(getattr(r, c))[order] for c in COLUMNS}


def sorted_rows(table: pa.Table) -> dict[str, np.ndarray]:
    order = np.lexsort((table["position"].to_numpy(), table["seq"].to_numpy()))
    return {c: table[c].to_numpy()[order] for c in COLUMNS}


def assert_same_rows(table: pa.Table, ws, run) -> None:
    got, want = sorted_rows(table), source_rows(ws, run)
    for column in COLUMNS:
        np.testing.assert_array_equal(got[column], want[column], err_msg=f"run {run}, column {column}")
    assert set(table["run"].to_pylist()) == {run}


def expected_position_curve(ws, runs) -> dict[tuple, tuple[float, int]]:
    sums = defaultdict(lambda: [0.0, 0])
    for run in runs:
        r = ws.runs[run]
        for segment, position, loss in zip(r.segment.tolist(), r.position.tolist(), r.loss.tolist()):
            sums[run, segment, position][0] += loss
            sums[run, segment, position][1] += 1
    return {key: (total / n, n) for key, (total, n) in sums.items()}


def assert_curve(rows, want) -> None:
    got = {(run, segment, position): (mean, n) for run, segment, position, mean, n in rows}
    assert got.keys() == want.keys()
    for key, (mean, n) in want.items():
        assert got[key][1] == n, key
        assert got[key][0] == pytest.approx(mean, rel=1e-9), key


def shards(folder: Path, run: str) -> list[Path]:
    return sorted((folder / "data" / f"run={run}").glob("*.parquet"))


# --- the release's content --------------------------------------------------------------------------


def test_release_verifies_and_holds_every_row(ws, release):
    assert verify_release(release.out) == []
    for run in EXPORTED:
        files = shards(release.out, run)
        assert len(files) >= 2, "the small shard limit should force several shards"
        for f in files:
            assert pq.read_schema(f).equals(RELEASE_SCHEMA)
        assert_same_rows(pq.read_table(files, schema=RELEASE_SCHEMA), ws, run)
    assert sorted(p.name for p in (release.out / "data").iterdir()) == sorted(f"run={run}" for run in EXPORTED)


def test_shards_respect_the_size_limit_once_they_hold_more_than_one_row_group(release):
    for run in EXPORTED:
        for f in shards(release.out, run):
            metadata = pq.ParquetFile(f).metadata
            groups = [sum(metadata.row_group(i).column(j).total_compressed_size for j in range(metadata.num_columns))
                      for i in range(metadata.num_row_groups)]
            footer = int.from_bytes(f.read_bytes()[-8:-4], "little") + 8
            data_bytes = f.stat().st_size - footer
            if len(groups) > 1:  # the limit is judged from the previous row group: one group's slack
                assert data_bytes <= SMALL["max_shard_bytes"] + max(groups), (f, groups)


def test_runs_parquet_flattens_each_runs_config(ws, release):
    runs = {row["run"]: row for row in pq.read_table(release.out / "runs.parquet").to_pylist()}
    assert list(runs) == EXPORTED
    for run in EXPORTED:
        info = ws.run_json[run]
        row = runs[run]
        assert row["tokens_trained"] == info["tokens_trained"] == len(ws.runs[run].loss)
        assert row["rows"] == len(ws.runs[run].loss)
        for key in ("status", "dataset", "dataset_sha256", "seed", "n_params", "n_params_non_embedding"):
            assert row[key] == info[key], key
        for section, values in info["config"].items():
            for key, value in values.items():
                assert row[f"{section}.{key}"] == value, f"{section}.{key}"
        assert json.loads(row["config_json"]) == info["config"]
        assert row["seq_len"] == ws.datasets[info["dataset"]].spec.seq_len
    assert runs["base"]["model.n_layer"] == 4 and runs["123"]["model.n_layer"] == 2
    assert runs["v1.2+rope"]["status"] == "failed"


def test_data_set_files_are_copied(ws, release):
    for name in ("synth", "other"):
        for rel in ("vocab.parquet", "manifest.json", "tokenizer/info.json", "tokenizer/tokenizer.json"):
            source, copy = ws.home / "data" / name / rel, release.out / "datasets" / name / rel
            assert copy.read_bytes() == source.read_bytes(), rel


def test_dataset_card_has_one_config_per_run_and_the_schema(release):
    text = (release.out / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    configs = {c["config_name"]: c for c in header["configs"]}
    assert list(configs) == ["all", *EXPORTED, "runs"]
    assert configs["all"]["default"] is True
    assert configs["all"]["data_files"] == [{"split": "train", "path": "data/*/*.parquet"}]
    for run in EXPORTED:
        assert configs[run]["data_files"] == [{"split": "train", "path": f"data/run={run}/*.parquet"}]
    assert header["pretty_name"] == "synthetic losses"
    for phrase in ("nats", "0-based", "segment_tokens", "float16", "exactly once", "sha256sum -c"):
        assert phrase in text, phrase


def test_sha256sums_work_with_sha256sum(release):
    if shutil.which("sha256sum") is None:
        pytest.skip("no sha256sum on this machine")
    done = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=release.out, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = {line.split("  ", 1)[1] for line in (release.out / "SHA256SUMS").read_text().splitlines()}
    on_disk = {p.relative_to(release.out).as_posix() for p in release.out.rglob("*") if p.is_file()}
    assert listed == on_disk - {"SHA256SUMS"}


# --- loading --------------------------------------------------------------------------------------


def test_datasets_loads_each_run_config_the_default_and_plain_parquet(ws, release, hf_offline):
    import datasets

    for run in EXPORTED:
        one = datasets.load_dataset(str(release.out), run, split="train", cache_dir=str(hf_offline))
        assert_same_rows(one.data.table, ws, run)
    everything = datasets.load_dataset(str(release.out), split="train", cache_dir=str(hf_offline)).data.table
    assert sorted(set(everything["run"].to_pylist())) == sorted(EXPORTED)
    for run in EXPORTED:
        assert_same_rows(everything.filter(pc.equal(everything["run"], run)), ws, run)
    plain = datasets.load_dataset("parquet", data_files=str(release.out / "data/run=123/*.parquet"),
                                  split="train", cache_dir=str(hf_offline))
    assert_same_rows(plain.data.table, ws, "123")
    runs = datasets.load_dataset(str(release.out), "runs", split="train", cache_dir=str(hf_offline))
    assert runs["run"] == EXPORTED


def test_duckdb_and_polars_give_the_source_position_curve(ws, release):
    want = expected_position_curve(ws, EXPORTED)
    glob = f"{release.out}/data/*/*.parquet"
    curve = duckdb.sql(
        f"SELECT run, segment, position, avg(CAST(loss AS DOUBLE)), count(*) FROM '{glob}' GROUP BY ALL"
    ).fetchall()
    assert_curve(curve, want)
    frame = (
        pl.scan_parquet(glob)
        .group_by("run", "segment", "position")
        .agg(pl.col("loss").cast(pl.Float64).mean(), pl.len())
        .collect()
    )
    assert frame.schema["run"] == pl.String and frame.schema["segment"] == pl.Int32
    assert_curve(frame.rows(), want)


def test_the_duckdb_cli_reads_the_release_and_the_live_table(ws, release):
    """The duckdb command-line tool (pip package duckdb-cli), not only the Python module."""
    import sys

    cli = shutil.which("duckdb", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if cli is None:
        pytest.skip("no duckdb command-line tool (pip install duckdb-cli)")
    query = "SELECT run, segment, position, avg(CAST(loss AS DOUBLE)), count(*) FROM {} GROUP BY ALL"
    live = ("read_parquet('lossdb/losses/*/*/part-*.parquet', hive_partitioning = true, "
            "hive_types = {'run': VARCHAR, 'segment': INTEGER}) WHERE run IN ('base', '123')")
    for folder, source, runs in ((release.out, "'data/*/*.parquet'", EXPORTED), (ws.home, live, ["base", "123"])):
        done = subprocess.run([cli, "-csv", "-noheader", "-c", query.format(source)], cwd=folder,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        rows = [line.split(",") for line in done.stdout.splitlines()]
        assert_curve([(r, int(s), int(p), float(m), int(n)) for r, s, p, m, n in rows], expected_position_curve(ws, runs))


def test_the_live_table_loads_with_datasets_polars_and_duckdb(ws, hf_offline):
    """The same readers on HOME/lossdb/losses (hive folders run=<run>/segment=<k>)."""
    import datasets

    root = ws.home / "lossdb" / "losses"
    want = expected_position_curve(ws, ["base", "123"])
    con = lossdb.connect(ws.home)
    assert_curve(con.sql("SELECT run, segment, position, mean_loss, n FROM position_curve "
                         "WHERE run IN ('base', '123')").fetchall(), want)
    frame = (
        pl.scan_parquet(f"{root}/**/*.parquet", hive_partitioning=True,
                        hive_schema={"run": pl.String, "segment": pl.Int32})
        .filter(pl.col("run").is_in(["base", "123"]))
        .group_by("run", "segment", "position")
        .agg(pl.col("loss").cast(pl.Float64).mean(), pl.len())
        .collect()
    )
    assert_curve(frame.rows(), want)
    # datasets reads the rows but not the folder names: select a run by its files (docs/releasing.md)
    live = datasets.load_dataset("parquet", data_files=str(root / "run=123/*/*.parquet"), split="train",
                                 cache_dir=str(hf_offline)).data.table
    r = ws.runs["123"]
    assert "run" not in live.column_names and "segment" not in live.column_names  # why a release stores them
    assert live.num_rows == len(r.loss)
    assert float(pc.sum(live["loss"].cast(pa.float64())).as_py()) == pytest.approx(float(r.loss.astype(np.float64).sum()))


# --- verify finds what is wrong ---------------------------------------------------------------------


def test_verify_catches_a_flipped_byte(copy_of):
    shard = shards(copy_of, "base")[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = verify_release(copy_of)
    rel = shard.relative_to(copy_of).as_posix()
    assert any(p.startswith(f"{rel}: checksum mismatch") for p in problems), problems


def test_verify_catches_a_missing_shard(ws, copy_of):
    shard = shards(copy_of, "123")[-1]
    lost = pq.ParquetFile(shard).metadata.num_rows
    shard.unlink()
    problems = verify_release(copy_of)
    rel = shard.relative_to(copy_of).as_posix()
    tokens = len(ws.runs["123"].loss)
    assert f"{rel}: missing (listed in SHA256SUMS)" in problems
    assert f"run '123': {tokens - lost:,} rows in data/run=123/, but runs.parquet says tokens_trained = {tokens:,}" in problems
    assert len(problems) == 2, problems


def test_verify_catches_a_duplicated_row_even_with_counts_and_sums_right(copy_of):
    shard = shards(copy_of, "base")[0]
    table = pq.read_table(shard)
    # the last row becomes a copy of the first: same row count, one (seq, position) twice
    doubled = pa.concat_tables([table.slice(0, table.num_rows - 1), table.slice(0, 1)])
    pq.write_table(doubled, shard)
    write_sums(copy_of)
    first = table.slice(0, 1).to_pylist()[0]
    problems = verify_release(copy_of)
    assert len(problems) == 1, problems
    assert problems[0] == (f"run 'base': 1 (seq, position) pairs appear more than once (1 extra rows), the first at "
                           f"seq {first['seq']}, position {first['position']}: a token is recorded twice")


def test_verify_catches_a_changed_schema_and_a_foreign_file(copy_of):
    shard = shards(copy_of, "v1.2+rope")[0]
    table = pq.read_table(shard)
    pq.write_table(table.set_column(4, "loss", table["loss"].cast(pa.float64())), shard)
    (copy_of / "notes.txt").write_text("hello")
    write_sums(copy_of)
    (copy_of / "later.txt").write_text("not summed")
    problems = verify_release(copy_of)
    rel = shard.relative_to(copy_of).as_posix()
    assert f"{rel}: schema differs from the release schema: column loss is double, expected float" in problems
    assert "later.txt: not listed in SHA256SUMS" in problems
    assert len(problems) == 2, problems


def test_verify_reports_a_missing_runs_table(copy_of):
    (copy_of / "runs.parquet").unlink()
    problems = verify_release(copy_of)
    assert "runs.parquet: missing (listed in SHA256SUMS)" in problems
    assert any(p.startswith("runs.parquet: cannot be read") for p in problems)


# --- what export refuses ------------------------------------------------------------------------------


def test_a_running_run_is_refused(ws, tmp_path):
    out = tmp_path / "release"
    with pytest.raises(ExportError, match=r"run 'busy' has status 'running' in .*run\.json: it is still training"):
        export_release(ws.home, ["base", "busy"], out, **SMALL)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_rows_must_match_tokens_trained(tmp_path):
    home = tmp_path / "ws"
    make_workspace(home, [SyntheticDataset()], [SyntheticRun("base")])
    info_path = home / "runs/base/run.json"
    info = json.loads(info_path.read_text())
    info["tokens_trained"] += 16
    info_path.write_text(json.dumps(info))
    with pytest.raises(ExportError, match="the loss table holds 512 rows but .* says tokens_trained = 528"):
        export_release(home, ["base"], tmp_path / "out", **SMALL)


def test_a_rebuilt_data_set_is_refused(tmp_path):
    home = tmp_path / "ws"
    make_workspace(home, [SyntheticDataset()], [SyntheticRun("base")])
    (home / "data/synth/manifest.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ExportError, match="the data set was rebuilt"):
        export_release(home, ["base"], tmp_path / "out", **SMALL)


def test_unknown_runs_and_reserved_names_are_refused(ws, tmp_path):
    with pytest.raises(ExportError, match=r"run 'nope': no .*run\.json \(runs in this workspace: 123, base, busy, v1\.2\+rope\)"):
        export_release(ws.home, ["nope"], tmp_path / "out", **SMALL)
    with pytest.raises(ExportError, match="clashes with the release's 'all' config"):
        export_release(ws.home, ["all"], tmp_path / "out", **SMALL)
    with pytest.raises(ExportError, match="holds the workspace"):
        export_release(ws.home, ["base"], ws.home.parent, force=True, **SMALL)


def test_existing_folder_needs_force_and_a_failed_export_leaves_it_alone(tmp_path):
    home = tmp_path / "ws"
    ws = make_workspace(home, [SyntheticDataset()], [SyntheticRun("base", flush_every=2)])
    out = tmp_path / "rel" / "release"
    export_release(home, ["base"], out, **SMALL)
    with pytest.raises(ExportError, match="exists \\(use --force to replace it\\)"):
        export_release(home, ["base"], out, **SMALL)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # damage a data page of a part file (its footer still reads): the export fails while writing shards
    part = next((home / "lossdb/losses/run=base").rglob("part-*.parquet"))
    data = bytearray(part.read_bytes())
    data[20:60] = bytes(40)
    part.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=f"{part}: cannot be read"):
        export_release(home, ["base"], out, force=True, **SMALL)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["release"], "no temp folder left behind"
    assert verify_release(out) == [] and ws.runs["base"] is not None


def test_force_replaces_the_release(tmp_path):
    home = tmp_path / "ws"
    make_workspace(home, [SyntheticDataset()], [SyntheticRun("a"), SyntheticRun("b", seed=1)])
    out = tmp_path / "release"
    export_release(home, ["a"], out, **SMALL)
    export_release(home, ["b"], out, force=True, **SMALL)
    assert [p.name for p in (out / "data").iterdir()] == ["run=b"]
    assert verify_release(out) == []


# --- the CLI --------------------------------------------------------------------------------------------


def test_cli_export_then_verify(ws, tmp_path):
    out = tmp_path / "release"
    result = runner.invoke(app, ["export", "--runs", "base,123", "--out", str(out), "--name", "demo",
                                 "--home", str(ws.home)])
    assert result.exit_code == 0, result.output
    assert "rows/s" in result.stderr and "1.02k/1.02k" in result.stderr  # the progress bar, by rows
    assert "run base: 512 rows, 4 segments" in result.stdout
    assert f"wrote {out}" in result.stdout
    checked = runner.invoke(app, ["export", "--verify", str(out)])
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.startswith(f"ok: {out} verified")

    shard = shards(out, "base")[0]
    shard.unlink()
    failed = runner.invoke(app, ["export", "--verify", str(out)])
    assert failed.exit_code != 0
    rel = shard.relative_to(out).as_posix()
    assert f"problem: {rel}: missing (listed in SHA256SUMS)" in failed.stderr
    assert "failed verification (2 problem(s))" in failed.stderr


def test_cli_refuses_a_running_run_and_bad_flags(ws, tmp_path):
    result = runner.invoke(app, ["export", "--runs", "busy", "--out", str(tmp_path / "r"), "--home", str(ws.home)])
    assert result.exit_code == 2
    assert "run 'busy' has status 'running'" in result.stderr
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["export", "--verify", str(tmp_path), "--runs", "base"])
    assert result.exit_code == 2 and "leave out --runs and --out" in result.stderr
    result = runner.invoke(app, ["export", "--runs", "base"])
    assert result.exit_code == 2 and "needs --runs A,B and --out DIR" in result.stderr
