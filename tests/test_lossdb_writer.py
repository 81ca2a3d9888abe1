"""LossWriter, discard_after and rollups, checked against plain Python on tiny tables."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lossdb.rollup import build_missing_rollups, rollup_paths
from lossdb.schema import LOSS_SCHEMA, ROLLUP_KEY, ROLLUP_KINDS, losses_root, rollups_root, temp_name
from lossdb.writer import LossWriter, discard_after

REPO = Path(__file__).resolve().parents[1]


def half(x: float) -> float:
    """IEEE half-precision rounding by the struct module: independent of numpy's cast."""
    return struct.unpack("e", struct.pack("e", x))[0]


def part_files(root: Path) -> list[Path]:
    return sorted(root.glob("run=*/segment=*/part-*.parquet"))


def read_rows(lossdb_root: Path, run: str) -> list[tuple]:
    """Every stored row as (segment, step, seq, position, token_id, loss), in file then row order."""
    rows = []
    for path in sorted((losses_root(lossdb_root) / f"run={run}").glob("segment=*/part-*.parquet"),
                       key=lambda p: int(p.stem.split("-")[2])):
        segment = int(path.parent.name.split("=")[1])
        table = pq.read_table(path)
        for r in table.to_pylist():
            rows.append((segment, r["step"], r["seq"], r["position"], r["token_id"], r["loss"]))
    return rows


def batch(rng, step: int, B: int = 2, T: int = 5, vocab: int = 30):
    seq = rng.choice(1000, size=B, replace=False).astype(np.int64) + 1000 * step
    tokens = rng.integers(0, vocab, size=(B, T)).astype(np.uint16)  # tokens.bin dtype
    loss = rng.uniform(0, 12, size=(B, T)).astype(np.float32)
    return seq, tokens, loss


def test_round_trip_schema_order_and_float16_rounding(tmp_path):
    rng = np.random.default_rng(0)
    written = []
    with LossWriter(tmp_path, "r1") as writer:
        for step in range(3):
            seq, tokens, loss = batch(rng, step)
            if step == 1:  # rounding edge cases: ties, subnormals, largest half
                loss[0, :] = np.array([0.1, 1 / 3, 65504.0, 3e-8, 2.0**-25], dtype=np.float32)
            writer.write(step, 0, seq, tokens, loss)
            written.append((step, seq, tokens, loss))

    (path,) = part_files(tmp_path / "losses")
    assert path.relative_to(tmp_path / "losses").as_posix() == "run=r1/segment=0/part-0-0.parquet"
    assert pq.read_schema(path).remove_metadata() == LOSS_SCHEMA
    expected = []
    for step, seq, tokens, loss in written:
        for b in range(len(seq)):
            for t in range(tokens.shape[1]):
                expected.append((0, step, int(seq[b]), t, int(tokens[b, t]), half(float(loss[b, t]))))
    assert read_rows(tmp_path, "r1") == expected
    assert half(1 / 3) != float(np.float32(1 / 3))  # the rounding is visible, not a no-op


def test_float16_and_float64_inputs_store_the_same_values(tmp_path):
    values = np.array([[0.1, 2.5, 7.123456]], dtype=np.float64)
    with LossWriter(tmp_path, "a") as w16, LossWriter(tmp_path, "b") as w64:
        w16.write(0, 0, np.array([3]), np.array([[1, 2, 3]]), values.astype(np.float16))
        w64.write(0, 0, np.array([3]), np.array([[1, 2, 3]]), values)
    losses_a = [r[-1] for r in read_rows(tmp_path, "a")]
    assert losses_a == [r[-1] for r in read_rows(tmp_path, "b")]
    assert losses_a == [half(v) for v in values[0]]


def test_caller_may_reuse_its_buffers_after_write(tmp_path):
    seq, tokens, loss = np.array([5, 6]), np.ones((2, 3), dtype=np.int64), np.full((2, 3), 2.0, dtype=np.float32)
    with LossWriter(tmp_path, "r") as writer:
        writer.write(0, 0, seq, tokens, loss)
        seq[:] = 99
        tokens[:] = 7
        loss[:] = 9.0
    assert {(r[2], r[4], r[5]) for r in read_rows(tmp_path, "r")} == {(5, 1, 2.0), (6, 1, 2.0)}


def test_parts_split_on_segment_flush_and_row_budget(tmp_path):
    rng = np.random.default_rng(1)
    # 10 rows per step; budget 25 rows: a part closes at the first step boundary at or past 25 rows.
    with LossWriter(tmp_path, "r", max_part_rows=25) as writer:
        for step in range(12):
            segment = 0 if step < 7 else 1
            writer.write(step, segment, *batch(rng, step))
            if step == 9:
                writer.flush()
    names = [p.relative_to(tmp_path / "losses/run=r").as_posix() for p in part_files(tmp_path / "losses")]
    # segment 0: steps 0-2 (30 rows), 3-5, 6 (segment change); segment 1: 7-9 (flush), 10-11 (close)
    assert sorted(names) == sorted([
        "segment=0/part-0-0.parquet", "segment=0/part-0-3.parquet", "segment=0/part-0-6.parquet",
        "segment=1/part-0-7.parquet", "segment=1/part-0-10.parquet",
    ])
    for path in part_files(tmp_path / "losses"):
        steps = sorted(set(pq.read_table(path)["step"].to_pylist()))
        assert steps == list(range(steps[0], steps[-1] + 1))  # consecutive
        assert steps[0] == int(path.stem.split("-")[2])


def test_flush_puts_everything_on_disk(tmp_path):
    rng = np.random.default_rng(2)
    writer = LossWriter(tmp_path, "r")
    for step in range(4):
        writer.write(step, 0, *batch(rng, step))
    writer.flush()
    assert len(read_rows(tmp_path, "r")) == 4 * 10
    assert writer.stats.rows == 40 and writer.stats.parts == 1
    writer.write(4, 0, *batch(rng, 4))
    writer.close()
    writer.close()  # idempotent
    assert len(read_rows(tmp_path, "r")) == 50
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(5, 0, *batch(rng, 5))


@pytest.mark.parametrize(
    "args, message",
    [
        ((-1, 0, [1], [[1, 2]], [[1.0, 2.0]]), "step must be"),
        ((0, -1, [1], [[1, 2]], [[1.0, 2.0]]), "segment must be"),
        ((0, 0, [1, 2], [[1, 2]], [[1.0, 2.0]]), r"expected seq \(B,\)"),
        ((0, 0, [1], [[1, 2]], [[1.0]]), r"expected seq \(B,\)"),
        ((0, 0, [1], [[1.5, 2]], [[1.0, 2.0]]), "token_ids must hold integers"),
        ((0, 0, [1], [[1, 2]], [[1, 2]]), "loss must be floating point"),
        ((0, 0, [1], [[-1, 2]], [[1.0, 2.0]]), "token_ids outside"),
        ((0, 0, [1], np.zeros((1, 2**15), dtype=int), np.zeros((1, 2**15))), "exceeds 32767"),
    ],
)
def test_write_rejects_bad_input_with_a_clear_message(tmp_path, args, message):
    with LossWriter(tmp_path, "r") as writer:
        with pytest.raises(ValueError, match=message):
            writer.write(*args)


def test_steps_must_not_decrease_and_run_names_must_be_plain(tmp_path):
    with LossWriter(tmp_path, "r") as writer:
        writer.write(5, 0, [1], [[1]], [[1.0]])
        writer.write(5, 0, [2], [[1]], [[1.0]])  # same step again (micro-batches) is fine
        with pytest.raises(ValueError, match="must not decrease"):
            writer.write(4, 0, [3], [[1]], [[1.0]])
    for bad in ["", "a/b", "a=b", "x%20y", ".hidden", "with space"]:
        with pytest.raises(ValueError, match="run name"):
            LossWriter(tmp_path, bad)


def test_background_errors_surface_in_the_trainer(tmp_path):
    target = tmp_path / "losses/run=r/segment=0/part-0-0.parquet"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"an earlier part")  # the writer must refuse to record step 0 twice
    writer = LossWriter(tmp_path, "r", rollups=False)
    writer.write(0, 0, [1], [[1]], [[1.0]])
    with pytest.raises(RuntimeError, match="already exists"):
        writer.flush()
    with pytest.raises(RuntimeError, match="already exists"):
        writer.close()
    assert target.read_bytes() == b"an earlier part"


def test_writer_rollups_match_python_sums(tmp_path):
    rng = np.random.default_rng(3)
    with LossWriter(tmp_path, "r", max_part_rows=20) as writer:
        for step in range(5):
            writer.write(step, step // 3, *batch(rng, step, vocab=8))
    rows = read_rows(tmp_path, "r")
    for part in part_files(tmp_path / "losses"):
        segment, first = int(part.parent.name.split("=")[1]), int(part.stem.split("-")[2])
        part_rows = [r for r in rows if r[0] == segment and r[1] in set(pq.read_table(part)["step"].to_pylist())]
        expected = {kind: defaultdict(lambda: [0.0, 0]) for kind in ROLLUP_KINDS}
        for _, step, _, position, token, loss in part_rows:
            for kind, key in (("position", position), ("token", token), ("step", step)):
                expected[kind][key][0] += loss
                expected[kind][key][1] += 1
        for kind, path in rollup_paths(tmp_path, "r", segment, 0, first).items():
            got = {row[ROLLUP_KEY[kind]]: (row["loss_sum"], row["n"]) for row in pq.read_table(path).to_pylist()}
            assert got.keys() == expected[kind].keys()
            for key, (total, n) in expected[kind].items():
                assert got[key][1] == n and got[key][0] == pytest.approx(total, rel=1e-12)


def test_no_rollups_when_disabled_and_build_missing_rollups_recreates_them(tmp_path):
    rng = np.random.default_rng(4)
    batches = [batch(rng, step) for step in range(4)]
    with LossWriter(tmp_path, "with", max_part_rows=15) as a, LossWriter(tmp_path, "without", rollups=False, max_part_rows=15) as b:
        for step, (seq, tokens, loss) in enumerate(batches):
            a.write(step, 0, seq, tokens, loss)
            b.write(step, 0, seq, tokens, loss)
    assert not (tmp_path / "rollups/position/run=without").exists()

    report = build_missing_rollups(tmp_path)
    assert (report.parts_seen, report.parts_built, report.runs_built) == (4, 2, ("without",))
    for kind in ROLLUP_KINDS:
        made = sorted(p.relative_to(rollups_root(tmp_path, kind) / "run=with") for p in (rollups_root(tmp_path, kind) / "run=with").rglob("*.parquet"))
        built = sorted(p.relative_to(rollups_root(tmp_path, kind) / "run=without") for p in (rollups_root(tmp_path, kind) / "run=without").rglob("*.parquet"))
        assert made == built and len(made) == 2
        for name in made:
            assert pq.read_table(rollups_root(tmp_path, kind) / "run=with" / name).equals(
                pq.read_table(rollups_root(tmp_path, kind) / "run=without" / name))

    assert build_missing_rollups(tmp_path).parts_built == 0
    assert build_missing_rollups(tmp_path, runs=["with"], force=True).parts_built == 2
    with pytest.raises(ValueError, match="'nope' has no part files"):
        build_missing_rollups(tmp_path, runs=["nope"])


def test_discard_after_drops_later_parts_rollups_and_temp_files(tmp_path):
    rng = np.random.default_rng(5)
    data = {(rank, step): batch(rng, step * 2 + rank) for rank in range(2) for step in range(10)}
    writers = [LossWriter(tmp_path, "r", rank=rank) for rank in range(2)]
    for step in range(10):
        for rank, writer in enumerate(writers):
            writer.write(step, step // 4, *data[rank, step])
            if step % 2 == 1:
                writer.flush()  # the trainer flushes before each checkpoint
    for writer in writers:
        writer.close()
    torn = tmp_path / "losses/run=r/segment=1" / temp_name("part-0-6.parquet", "123")
    torn.write_bytes(b"PAR1 half a file")

    removed = discard_after(tmp_path, "r", 5, rank=0)  # resume rank 0 from a checkpoint at step 5
    assert torn in removed and not torn.exists()
    kept = {(p.parent.name, p.name) for p in part_files(tmp_path / "losses")}
    assert ("segment=1", "part-0-6.parquet") not in kept and ("segment=2", "part-0-8.parquet") not in kept
    assert ("segment=1", "part-1-6.parquet") in kept and ("segment=1", "part-0-4.parquet") in kept
    for kind in ROLLUP_KINDS:
        assert not (rollups_root(tmp_path, kind) / "run=r/segment=2/part-0-8.parquet").exists()
        assert (rollups_root(tmp_path, kind) / "run=r/segment=2/part-1-8.parquet").exists()

    discard_after(tmp_path, "r", 5)  # every rank
    assert not (tmp_path / "losses/run=r/segment=2").exists()  # emptied segment folders go too
    # Resume: steps 6..9 recorded again; every (seq, position) is then stored exactly once.
    writers = [LossWriter(tmp_path, "r", rank=rank) for rank in range(2)]
    for step in range(6, 10):
        for rank, writer in enumerate(writers):
            writer.write(step, step // 4, *data[rank, step])
    for writer in writers:
        writer.close()
    stored = [(r["seq"], r["position"]) for p in part_files(tmp_path / "losses") for r in pq.read_table(p).to_pylist()]
    expected = [(int(s), t) for (seq, tokens, _) in data.values() for s in seq for t in range(tokens.shape[1])]
    assert sorted(stored) == sorted(expected)


CRASHING_CHILD = """
import sys, numpy as np
from lossdb.writer import LossWriter
writer = LossWriter(sys.argv[1], "crash", max_part_rows=1)
rng = np.random.default_rng(0)
step = 0
while True:  # big parts, one per step: the temp file exists most of the time
    writer.write(step, 0, np.arange(300) + 300 * step, rng.integers(0, 50000, (300, 4096)),
                 rng.random((300, 4096), dtype=np.float32))
    step += 1
    if step % 4 == 0:
        writer.flush()
"""


def crash_a_writer(home: Path) -> None:
    """Run a writer in a child process and SIGKILL it while it writes a part (after one is complete)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CRASHING_CHILD, str(home)], env=env)
    segment = home / "losses/run=crash/segment=0"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and not (part_files(home / "losses") and list(segment.glob(".part-*.tmp"))):
            time.sleep(0.002)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_a_crash_mid_write_leaves_only_a_temp_file(tmp_path):
    for attempt in range(3):  # the kill can, rarely, land just after a rename: then try again
        home = tmp_path / f"attempt{attempt}"
        segment = home / "losses/run=crash/segment=0"
        crash_a_writer(home)
        temps = list(segment.glob(".part-*.tmp"))
        if temps:
            break
    assert temps, "never caught the writer mid-write"
    finals = part_files(home / "losses")
    assert finals, "the child never completed a part"
    for path in finals:  # every visible part is whole
        assert pq.read_metadata(path).num_rows == 300 * 4096
    removed = discard_after(home, "crash", 10**9)
    assert set(temps) <= set(removed)
    assert not list(segment.glob(".part-*.tmp"))
    assert part_files(home / "losses") == finals


def test_writer_imports_without_duckdb_or_polars():
    code = (
        "import sys; sys.modules['duckdb'] = None; sys.modules['polars'] = None\n"
        "import lossdb.writer, lossdb.rollup, lossdb.synthetic, lossdb.schema\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
