"""The trainer (train/trainer.py) and `cli.py train`, on CPU with a tiny model and data set.

One module-wide data set (bpe:300, seq_len 32, 1,000 sequences) and one uninterrupted
reference run of 100 steps; every other run here repeats it in some broken way (kill -9 and
resume, Ctrl-C and resume, two ranks under torchrun) and must come out the same, with every
(seq, position) in the loss table exactly once. The loss table is read straight from Parquet.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from lossdb.schema import LOSS_SCHEMA
from train.batches import rank_rows
from train.checkpoint import list_checkpoints, load_checkpoint
from train.config import OptimConfig, load_config
from tiny_data import build_tiny_dataset
from train.dataset import open_dataset
from train.model import build_model
from train.schedule import lr_at
from train.trainer import NonFiniteLoss, TrainError, train

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SEQ_LEN = 32
BATCH = 4
STEPS = 100
TOKENS = STEPS * BATCH * SEQ_LEN  # 12,800
SEGMENT_TOKENS = 5 * BATCH * SEQ_LEN  # five steps per segment: 20 segments
CHECKPOINT_EVERY = 20

CONFIG = f"""
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
micro_batch_size = 2
checkpoint_every = {CHECKPOINT_EVERY}
log_every = 1

[lossdb]
segment_tokens = {SEGMENT_TOKENS}
"""


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, here and in the subprocesses: on 2 shared cores, a 2-layer model of width
    32 runs several times faster on one thread than on two, and the runs compare bit for bit."""
    threads, before = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the trainer leaves the thread count alone when this is set
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if before is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = before


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A workspace with the tiny data set and the config file."""
    home = tmp_path_factory.mktemp("home")
    build_tiny_dataset(home, home / "corpus", seq_len=SEQ_LEN, n_sequences=1000, n_docs=40)
    (home / "tiny.toml").write_text(CONFIG)
    return home


@pytest.fixture(scope="module")
def reference(home) -> str:
    """The uninterrupted run every broken run must reproduce."""
    result = train(load_config(home / "tiny.toml"), home=home, run="ref", progress=False)
    assert result.status == "finished" and result.steps == STEPS
    return "ref"


def losses(home: Path, run: str) -> duckdb.DuckDBPyRelation:
    con = duckdb.connect()
    glob = home / "lossdb" / "losses" / f"run={run}" / "*" / "*.parquet"
    return con.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true, filename = true)")


def rows(home: Path, run: str) -> dict[str, np.ndarray]:
    """The run's rows as numpy columns, sorted by (seq, position)."""
    table = losses(home, run).order("seq, position").fetchnumpy()
    return {k: np.asarray(v) for k, v in table.items()}


def cli(home: Path, *args: str) -> list[str]:
    return [PYTHON, str(REPO / "cli.py"), "train", "--home", str(home), *args]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def start_and_signal(home: Path, run: str, sig: int, after_step: int) -> subprocess.CompletedProcess:
    """Start `cli.py train` as run `run`, send `sig` once it logged `after_step`, wait for it."""
    proc = subprocess.Popen(cli(home, "--config", str(home / "tiny.toml"), "--run", run), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = home / "runs" / run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if lines and json.loads(lines[-1])["step"] >= after_step:
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_exactly_once(home: Path, run: str, steps: int) -> dict[str, np.ndarray]:
    """Every (seq, position) of the first `steps` steps is in the table once, with the right step,
    segment and token; nothing else is."""
    ds = open_dataset(home, "tiny")
    order = np.load(home / "runs" / run / "order.npy")
    got = rows(home, run)
    n = steps * BATCH * SEQ_LEN
    assert len(got["seq"]) == n
    assert losses(home, run).aggregate("count(DISTINCT (seq, position))").fetchall()[0][0] == n
    trained = order[: steps * BATCH]
    assert np.array_equal(np.unique(got["seq"]), np.sort(trained))
    step_of_seq = np.empty(ds.n_sequences, dtype=np.int64)
    step_of_seq[trained] = np.arange(len(trained)) // BATCH
    assert np.array_equal(got["step"], step_of_seq[got["seq"]])
    assert np.array_equal(got["position"], np.tile(np.arange(SEQ_LEN), steps * BATCH))
    assert np.array_equal(got["token_id"], ds.tokens[got["seq"], got["position"] + 1])
    assert np.array_equal(got["segment"], got["step"] * BATCH * SEQ_LEN // SEGMENT_TOKENS)
    assert np.isfinite(got["loss"]).all()
    return got


def run_info(home: Path, run: str) -> dict:
    return json.loads((home / "runs" / run / "run.json").read_text())


# --- the reference run -----------------------------------------------------------------------------


def test_reference_run_records_every_token_once(home, reference):
    got = assert_exactly_once(home, reference, STEPS)
    info = run_info(home, reference)
    assert info["status"] == "finished"
    assert info["tokens_trained"] == TOKENS == len(got["seq"])
    assert info["dataset"] == "tiny" and info["dataset_sha256"] == open_dataset(home, "tiny").sha256
    for part in (home / "lossdb" / "losses" / f"run={reference}").rglob("*.parquet"):
        assert pq.read_schema(part).remove_metadata() == LOSS_SCHEMA  # run, segment: partition keys only
    # losses are float16 values stored as FLOAT
    assert np.array_equal(got["loss"], got["loss"].astype(np.float16).astype(np.float32))


def test_run_folder(home, reference):
    folder = home / "runs" / reference
    saved = load_config(folder / "config.toml")  # fully resolved: the data set's sizes written in
    assert (saved.model.seq_len, saved.model.vocab_size) == (SEQ_LEN, 300)
    assert (saved.train.tokens, saved.lossdb.segment_tokens) == (TOKENS, SEGMENT_TOKENS)
    info = run_info(home, reference)
    for key in ("run", "status", "dataset", "dataset_sha256", "seed", "tokens_trained", "n_params",
                "n_params_non_embedding", "config", "started_at", "finished_at", "device", "versions",
                "git_commit", "tokens_per_s"):
        assert key in info, key
    assert info["config"] == saved.to_dict()
    model = build_model(saved.model)
    assert info["n_params"] == sum(p.numel() for p in model.parameters())
    order = np.load(folder / "order.npy")  # one pass in a seed-determined order
    assert len(order) == STEPS * BATCH and len(np.unique(order)) == len(order)
    assert info["order_sha256"] == hashlib.sha256(order.astype(np.int64).tobytes()).hexdigest()
    assert [step for step, _ in list_checkpoints(folder / "checkpoints")] == [80, 100]
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(STEPS))
    assert all(m["train/lr"] == pytest.approx(lr_at(m["step"], STEPS, saved.optim)) for m in metrics)


def test_logged_loss_is_the_mean_of_the_recorded_losses(home, reference):
    """The optimized loss (logged) is the mean of exactly the per-token losses that were recorded."""
    per_step = dict(losses(home, reference).aggregate("step, avg(loss)", "step").fetchall())
    metrics = [json.loads(line) for line in (home / "runs" / reference / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        assert per_step[m["step"]] == pytest.approx(m["train/loss"], abs=2e-3)  # float16 rounding of each row


def test_recorded_losses_equal_a_recomputation_from_the_checkpoint(home, reference):
    """Checkpoint step-80 holds the weights step 80 trained with: recompute that step's losses."""
    folder = home / "runs" / reference
    state = load_checkpoint(folder / "checkpoints" / "step-00000080.pt")
    model = build_model(load_config(folder / "config.toml").model)
    model.load_state_dict(state["model"])
    step_rows = losses(home, reference).filter("step = 80").order("seq, position").fetchnumpy()
    seqs = np.unique(step_rows["seq"])
    assert len(seqs) == BATCH
    tokens = torch.from_numpy(open_dataset(home, "tiny").tokens[seqs].astype(np.int64))  # (B, T+1)
    with torch.no_grad():
        _, recomputed = model(tokens[:, :-1], tokens[:, 1:])  # (B, T), float32
    recomputed = recomputed.numpy().reshape(-1)
    recorded = np.asarray(step_rows["loss"])
    # the recorded value is the training value rounded to float16: within half a float16 step
    assert np.all(np.abs(recorded - recomputed) <= np.abs(recomputed) * 2.0**-11 + 1e-5)


def test_schedule_warmup_then_cosine():
    cfg = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_frac=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # 10 warmup steps up to the peak
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    midpoint = 10 + (99 - 10) / 2  # cosine: halfway down at the middle of the decay
    assert lr_at(int(midpoint), 100, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 44 / 89)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_rank_rows_split_each_global_batch():
    order = np.arange(24)
    for step in range(3):
        parts = [rank_rows(order, step, 8, rank, 2) for rank in range(2)]
        assert np.array_equal(np.concatenate(parts), order[step * 8 : (step + 1) * 8])


# --- interrupted runs --------------------------------------------------------------------------------


def test_kill_9_then_resume_reproduces_the_reference(home, reference):
    # killed after the checkpoint at step 40 and past the next segment change (step 45), so
    # parts recorded after the checkpoint are on disk and must be discarded on resume
    done = start_and_signal(home, "killed", signal.SIGKILL, after_step=47)
    assert done.returncode == -signal.SIGKILL, f"not killed (finished before the signal?): {done.stderr[-2000:]}"
    assert run_info(home, "killed")["status"] == "running"
    checkpoint = max(step for step, _ in list_checkpoints(home / "runs" / "killed" / "checkpoints"))
    first_steps = [int(p.stem.split("-")[2]) for p in (home / "lossdb" / "losses" / "run=killed").rglob("part-*.parquet")]
    assert checkpoint < STEPS and max(first_steps) >= checkpoint  # rows past the checkpoint exist

    # resume with the run's own saved config (no --config)
    resumed = subprocess.run(cli(home, "--run", "killed", "--resume"), cwd=REPO, env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    got = assert_exactly_once(home, "killed", STEPS)
    ref = rows(home, reference)
    assert np.array_equal(got["loss"], ref["loss"])  # same numbers, bit for bit, on the same CPU
    info = run_info(home, "killed")
    assert info["status"] == "finished" and info["tokens_trained"] == TOKENS and len(info["resumed_at"]) == 1


def test_ctrl_c_checkpoints_cleanly_and_resume_continues(home, reference):
    done = start_and_signal(home, "interrupted", signal.SIGINT, after_step=30)
    assert done.returncode == 130, f"not stopped by Ctrl-C (finished before it?): {done.stderr[-2000:]}"
    assert "--resume" in done.stdout
    info = run_info(home, "interrupted")
    stopped = info["steps"]
    assert info["status"] == "running" and 30 < stopped < STEPS
    assert info["tokens_trained"] == stopped * BATCH * SEQ_LEN
    assert max(step for step, _ in list_checkpoints(home / "runs" / "interrupted" / "checkpoints")) == stopped
    assert_exactly_once(home, "interrupted", stopped)  # flushed: every step before the stop, nothing after

    resumed = subprocess.run(cli(home, "--run", "interrupted", "--resume"), cwd=REPO, env=env(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    got = assert_exactly_once(home, "interrupted", STEPS)
    assert np.array_equal(got["loss"], rows(home, reference)["loss"])


def test_two_ranks_under_torchrun(home, reference):
    torchrun = Path(PYTHON).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(REPO / "cli.py"), "train",
               "--home", str(home), "--config", str(home / "tiny.toml"), "--run-name", "ddp"]  # torchrun itself claims --run
    done = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = assert_exactly_once(home, "ddp", STEPS)
    # each rank wrote its own parts, holding exactly its share of every global batch
    order = np.load(home / "runs" / "ddp" / "order.npy")
    for rank in (0, 1):
        mine = losses(home, "ddp").filter(f"filename LIKE '%part-{rank}-%'").aggregate("seq", "seq").fetchnumpy()["seq"]
        expected = np.concatenate([rank_rows(order, s, BATCH, rank, 2) for s in range(STEPS)])
        assert np.array_equal(np.sort(mine), np.sort(expected))
    # the same model and data: step 0 matches the single-process run; later steps stay close
    ref = rows(home, reference)
    first = got["step"] == 0
    assert np.allclose(got["loss"][first], ref["loss"][first], rtol=2e-3)
    assert abs(got["loss"].mean() - ref["loss"].mean()) < 0.01


# --- failures and refusals -----------------------------------------------------------------------------


def test_nonfinite_loss_stops_with_the_step_and_keeps_what_was_written(home):
    cfg = load_config(home / "tiny.toml", ["optim.lr=1e5", "optim.warmup_frac=0", "optim.grad_clip=0"])
    with pytest.raises(NonFiniteLoss, match=r"at step (\d+)") as caught:
        train(cfg, home=home, run="diverged", progress=False)
    bad_step = int(caught.value.args[0].split("at step ")[1].split()[0])
    info = run_info(home, "diverged")
    assert info["status"] == "failed" and f"step {bad_step}" in info["message"]
    assert info["tokens_trained"] == bad_step * BATCH * SEQ_LEN
    assert_exactly_once(home, "diverged", bad_step)  # every step before it, none from it on
    checkpoints = list_checkpoints(home / "runs" / "diverged" / "checkpoints")
    assert checkpoints and max(step for step, _ in checkpoints) <= bad_step  # a checkpoint from before it
    state = load_checkpoint(checkpoints[-1][1])
    assert all(torch.isfinite(v).all() for v in state["model"].values())

    # the command line says the same in one line and exits 1
    runner = CliRunner()
    from cli import app

    result = runner.invoke(app, ["train", "--home", str(home), "--config", str(home / "tiny.toml"), "--run",
                                 "diverged2", "--set", "optim.lr=1e5", "--set", "optim.warmup_frac=0",
                                 "--set", "optim.grad_clip=0"])
    assert result.exit_code == 1 and "non-finite training loss at step" in result.output


def test_refuses_to_overwrite_a_finished_run(home, reference):
    from cli import app

    runner = CliRunner()
    config = str(home / "tiny.toml")
    before = (home / "runs" / reference / "run.json").read_text()
    result = runner.invoke(app, ["train", "--home", str(home), "--config", config, "--run", reference])
    assert result.exit_code == 2 and "already finished" in result.output
    result = runner.invoke(app, ["train", "--home", str(home), "--run", reference, "--resume"])
    assert result.exit_code == 2 and "already finished" in result.output
    assert (home / "runs" / reference / "run.json").read_text() == before


def test_other_refusals(home, reference):
    cfg = load_config(home / "tiny.toml")
    # an unfinished run without --resume: point at --resume
    (home / "runs" / "unfinished").mkdir(parents=True)
    (home / "runs" / "unfinished" / "run.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(TrainError, match="--resume"):
        train(cfg, home=home, run="unfinished", progress=False)
    with pytest.raises(TrainError, match="run name"):
        train(cfg, home=home, run="a/b", progress=False)
    with pytest.raises(TrainError, match="model.seq_len = 64 .* seq_len 32"):
        train(load_config(home / "tiny.toml", ["model.seq_len=64"]), home=home, run="x", progress=False)
    with pytest.raises(TrainError, match="more than one pass"):
        train(load_config(home / "tiny.toml", ["train.tokens=10M"]), home=home, run="x", progress=False)
    with pytest.raises(TrainError, match="not found"):
        train(load_config(home / "tiny.toml", ["data.dataset=nope"]), home=home, run="x", progress=False)
    with pytest.raises(TrainError, match="train.device = 'tpu'"):
        train(load_config(home / "tiny.toml", ["train.device=tpu"]), home=home, run="x", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="no CUDA device"):
            train(load_config(home / "tiny.toml", ["train.device=cuda"]), home=home, run="x", progress=False)
    with pytest.raises(TrainError, match="no run 'nothing' to resume"):
        train(cfg, home=home, run="nothing", resume=True, progress=False)
    # a resume must not change what the run trains
    with pytest.raises(TrainError, match="optim.lr"):
        (home / "runs" / "unfinished" / "config.toml").write_text((home / "runs" / reference / "config.toml").read_text())
        train(load_config(home / "tiny.toml", ["optim.lr=1e-2"]), home=home, run="unfinished", resume=True,
              progress=False)
    assert not (home / "runs" / "x").exists()


def test_cli_flags_become_config_keys(home):
    """--data, --tokens, --device, --no-compile and --set end up in the run's resolved config."""
    from cli import app

    result = CliRunner().invoke(app, ["train", "--home", str(home), "--config", str(home / "tiny.toml"),
                                      "--run", "flags", "--data", "tiny", "--tokens", "1280", "--device", "cpu",
                                      "--no-compile", "--set", "optim.lr=1e-3"])
    assert result.exit_code == 0, result.output
    saved = load_config(home / "runs" / "flags" / "config.toml")
    assert (saved.data.dataset, saved.train.tokens, saved.train.device, saved.train.compile, saved.optim.lr) == \
        ("tiny", 1280, "cpu", False, 1e-3)
    info = run_info(home, "flags")
    assert info["status"] == "finished" and info["total_steps"] == 1280 // (BATCH * SEQ_LEN)
    assert "1,280 tokens in 10 steps" in result.output


def test_data_order_follows_data_seed_not_seed(home, reference):
    """Seeds of one config see the same data in the same order (so their losses pair up)."""
    short = ["train.tokens=320", "train.checkpoint_every=0"]  # 2.5 -> 2 steps
    train(load_config(home / "tiny.toml", [*short, "train.seed=7"]), home=home, run="seed7", progress=False)
    train(load_config(home / "tiny.toml", [*short, "train.data_seed=7"]), home=home, run="data7", progress=False)
    ref_order = np.load(home / "runs" / reference / "order.npy")
    seed7_order = np.load(home / "runs" / "seed7" / "order.npy")
    data7_order = np.load(home / "runs" / "data7" / "order.npy")
    assert np.array_equal(seed7_order, ref_order[: len(seed7_order)])
    assert not np.array_equal(data7_order, ref_order[: len(data7_order)])
    assert run_info(home, "seed7")["order_sha256"] != run_info(home, "data7")["order_sha256"]
    # a different init seed gives different losses on the very same tokens
    seed7, ref = rows(home, "seed7"), losses(home, reference).filter("step < 2").order("seq, position").fetchnumpy()
    assert np.array_equal(seed7["seq"], ref["seq"]) and not np.allclose(seed7["loss"], ref["loss"])


def test_cli_refuses_a_run_another_process_is_training(home):
    from cli import app
    from train.runlock import RunLock

    with RunLock(home, "busy"):  # e.g. a sweep member training right now
        result = CliRunner().invoke(app, ["train", "--home", str(home), "--config", str(home / "tiny.toml"),
                                          "--run", "busy"])
    assert result.exit_code == 2 and "being trained by another process" in result.output
    assert not (home / "runs" / "busy").exists()
    result = CliRunner().invoke(app, ["train", "--home", str(home), "--config", str(home / "tiny.toml"),
                                      "--run", "../escape"])
    assert result.exit_code == 2 and "escape" in result.output and not (home / "escape.lock").exists()
