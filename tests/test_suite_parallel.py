"""Sweeps in several processes: two `cli.py sweep` of one suite at once never train the same run,
and `sweep --nproc-per-node 2` trains each run through torchrun (two CPU ranks here).

Slower than tests/test_suite.py (each process imports torch), so kept apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tiny_data import build_tiny_dataset

REPO = Path(__file__).resolve().parent.parent
SEQ_LEN, BATCH, STEPS = 32, 4, 30
TOKENS = STEPS * BATCH * SEQ_LEN

BASE = f"""
[model]
n_layer = 2
n_head = 2
d_model = 32
[data]
dataset = "tiny"
[train]
tokens = {TOKENS}
batch_size = {BATCH}
micro_batch_size = 2
checkpoint_every = 5
log_every = 5
device = "cpu"
compile = false
"""

SUITE = """
base = "base.toml"
seeds = 2
[[variation]]
label = "plain"
[[variation]]
label = "shift"
set = ["model.shift=[16,16]"]
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    build_tiny_dataset(home, tmp_path_factory.mktemp("corpus"), seq_len=SEQ_LEN, n_sequences=150, n_docs=10, seed=1)
    (home / "base.toml").write_text(BASE)
    (home / "s.toml").write_text(SUITE)
    return home


def sweep_command(home: Path, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "cli.py"), "sweep", str(home / "s.toml"), "--home", str(home), *args]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def assert_exactly_once(home: Path, run: str) -> None:
    glob = home / "lossdb" / "losses" / f"run={run}" / "*" / "*.parquet"
    n, distinct = duckdb.sql(f"SELECT count(*), count(DISTINCT (seq, position)) FROM read_parquet('{glob}')").fetchall()[0]
    assert n == distinct == TOKENS, run


@pytest.mark.slow
def test_two_sweeps_of_one_suite_share_the_runs(home):
    procs = [subprocess.Popen(sweep_command(home), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out + err
    text = "".join(out for out, _ in outputs)
    runs = [f"s.{label}.seed{k}" for label in ("plain", "shift") for k in range(2)]
    for run in runs:
        # started by exactly one of the two; the other found it busy or already finished
        starts = [line for line in text.splitlines() if f"] {run}: starting" in line]
        assert len(starts) == 1, text
        info = json.loads((home / "runs" / run / "run.json").read_text())
        assert info["status"] == "finished" and not info["resumed_at"]
        assert_exactly_once(home, run)
    assert not list((home / "runs").glob("*.lock"))


@pytest.mark.slow
def test_nproc_per_node_trains_each_run_through_torchrun(home):
    done = subprocess.run(sweep_command(home, "--only", "plain", "--seeds", "3", "--nproc-per-node", "2"),
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "s.plain.seed2: finished" in done.stdout and "2 finished before" in done.stdout
    info = json.loads((home / "runs" / "s.plain.seed2" / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 2 and info["seed"] == 1339
    assert_exactly_once(home, "s.plain.seed2")

    refused = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *sweep_command(home)[1:]],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "use --nproc-per-node N" in refused.stdout + refused.stderr
