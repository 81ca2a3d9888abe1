"""LossWriter: records every trained token's loss into the loss table, off the training thread.

The trainer calls `write()` once per optimizer step (or micro-batch) with the step's per-token
losses; `write()` copies the arrays and hands them to a background thread through a bounded
queue, so it returns at once unless the disk falls behind. The thread builds the rows, rounds
losses to float16 precision (stored as FLOAT, see DESIGN.md) and writes zstd Parquet parts:

    HOME/lossdb/losses/run=<run>/segment=<k>/part-<rank>-<first_step>.parquet

plus the part's rollups (lossdb/rollup.py). A part holds consecutive steps of one segment; a new
part starts when the segment changes, at `flush()`, or once the part reaches `max_part_rows`
(checked between steps, so one step never spans two parts unless flushed mid-step).

Exactly-once is the trainer's contract: flush before every checkpoint, and on resume from a
checkpoint at step S call `discard_after(lossdb_root, run, S)` before writing again.

pyarrow + numpy only (no duckdb/polars): this runs on GPU boxes.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from lossdb.parts import iter_part_files, remove_empty_dirs, write_parquet_atomic
from lossdb.rollup import compute_rollups, write_rollups
from lossdb.schema import (
    LOSS_PARQUET_OPTIONS,
    LOSS_SCHEMA,
    MAX_POSITIONS,
    ROLLUP_KINDS,
    check_run_name,
    losses_root,
    part_name,
    rollups_root,
    segment_dir,
)

DEFAULT_MAX_PART_ROWS = 1 << 23  # 8.4M rows: ~180 MB while a part is built, ~25 MB on disk
DEFAULT_MAX_QUEUED = 16  # write() blocks only when this many steps wait for the disk
ROW_GROUP_ROWS = 1 << 20  # DuckDB scans row groups in parallel


def round_to_float16(loss: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest float16 (ties to even); |x| > 65504 becomes inf."""
    with np.errstate(over="ignore"):
        return np.asarray(loss).astype(np.float16).astype(np.float32)


@dataclass
class _Batch:
    step: int
    segment: int
    seq: np.ndarray  # (B,) int64
    token_ids: np.ndarray  # (B, T)
    loss: np.ndarray  # (B, T) float

    @property
    def rows(self) -> int:
        return self.token_ids.size


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


_STOP = object()


@dataclass
class WriterStats:
    """What a LossWriter has done so far (for logs and benches)."""

    rows: int = 0  # rows on disk
    parts: int = 0  # part files on disk
    bytes: int = 0  # bytes of part files on disk (rollups not included)
    busy_s: float = 0.0  # background thread time spent building and writing parts
    blocked_s: float = 0.0  # caller time spent waiting in write() for a full queue, and in flush()


def build_rows(batches: list[_Batch]) -> pa.Table:
    """The loss table rows of `batches`, in training order: step, then batch row, then position."""
    step, seq, position, token_id, loss = [], [], [], [], []
    for b in batches:
        n_rows, seq_len = b.token_ids.shape
        step.append(np.full(b.rows, b.step, dtype=np.int32))
        seq.append(np.repeat(b.seq.astype(np.int64), seq_len))  # (B*T,)
        position.append(np.tile(np.arange(seq_len, dtype=np.int16), n_rows))  # (B*T,)
        token_id.append(b.token_ids.reshape(-1).astype(np.int32))
        loss.append(round_to_float16(b.loss).reshape(-1))
    columns = [np.concatenate(c) for c in (step, seq, position, token_id, loss)]
    return pa.Table.from_arrays([pa.array(c) for c in columns], schema=LOSS_SCHEMA)


class LossWriter:
    """Writes per-token losses of one run (and one rank) to `lossdb_root` (HOME/lossdb).

    Use as a context manager or call `close()` (the thread is a daemon: what was not flushed or
    closed is lost if the process exits). Errors from the background thread are re-raised by the
    next `write()`, `flush()` or `close()`. `stats` (WriterStats) says what it has written and
    how long it took, e.g. for the trainer's metrics.
    """

    def __init__(
        self,
        lossdb_root: Path,
        run: str,
        rank: int = 0,
        rollups: bool = True,
        *,
        max_part_rows: int = DEFAULT_MAX_PART_ROWS,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ):
        self.lossdb_root = Path(lossdb_root)
        self.run = check_run_name(run)
        if int(rank) != rank or rank < 0:
            raise ValueError(f"LossWriter rank must be a non-negative integer, got {rank!r}")
        self.rank = int(rank)
        self.rollups = rollups
        self.max_part_rows = max_part_rows
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._error: BaseException | None = None
        self._last_step = -1
        self._closed = False
        self.stats = WriterStats()
        self._thread = threading.Thread(target=self._work, name=f"LossWriter[{run}/{rank}]", daemon=True)
        self._thread.start()

    # --- the trainer's side -------------------------------------------------------------------

    def write(self, step: int, segment: int, seq: np.ndarray, token_ids: np.ndarray, loss: np.ndarray) -> None:
        """Record one step's losses: seq (B,) rows of tokens.bin, token_ids (B, T) targets, loss (B, T)."""
        self._check_open()
        batch = self._validated(step, segment, seq, token_ids, loss)
        self._last_step = batch.step
        self._put(batch)

    def flush(self) -> None:
        """Block until everything written so far is on disk; close the open part file."""
        self._check_open()
        request = _Flush()
        started = time.perf_counter()
        self._put(request)
        while not request.done.wait(timeout=0.05):
            self._raise_if_failed()
        self.stats.blocked_s += time.perf_counter() - started
        self._raise_if_failed()

    def close(self) -> None:
        """Flush, stop the background thread, and re-raise any error it hit."""
        if self._closed:
            return
        try:
            if self._thread.is_alive():
                self._put(_STOP)
                while self._thread.is_alive():
                    self._thread.join(timeout=0.05)
        finally:
            self._closed = True
        self._raise_if_failed()

    def __enter__(self) -> "LossWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # don't hide the trainer's own exception behind a writer error
            try:
                self.close()
            except Exception:
                pass

    # --- checks ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"LossWriter for run {self.run!r} rank {self.rank} is closed")
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"LossWriter for run {self.run!r} rank {self.rank} failed: {self._error}") from self._error

    def _put(self, item) -> None:
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            pass
        started = time.perf_counter()
        while True:
            try:
                self._queue.put(item, timeout=0.05)
                break
            except queue.Full:
                self._raise_if_failed()
        self.stats.blocked_s += time.perf_counter() - started

    def _validated(self, step, segment, seq, token_ids, loss) -> _Batch:
        where = f"LossWriter.write(step={step!r})"
        if int(step) != step or not 0 <= step < 2**31:
            raise ValueError(f"{where}: step must be an integer in [0, 2**31), got {step!r}")
        if int(segment) != segment or segment < 0:
            raise ValueError(f"{where}: segment must be a non-negative integer, got {segment!r}")
        if step < self._last_step:
            raise ValueError(f"{where}: steps must not decrease (last written step {self._last_step})")
        seq, token_ids, loss = np.asarray(seq), np.asarray(token_ids), np.asarray(loss)
        if token_ids.ndim != 2 or loss.shape != token_ids.shape or seq.shape != token_ids.shape[:1]:
            raise ValueError(
                f"{where}: expected seq (B,), token_ids (B, T), loss (B, T); "
                f"got {seq.shape}, {token_ids.shape}, {loss.shape}"
            )
        if token_ids.shape[1] > MAX_POSITIONS:
            raise ValueError(f"{where}: sequence length {token_ids.shape[1]} exceeds {MAX_POSITIONS} (position is INT16)")
        for name, array in (("seq", seq), ("token_ids", token_ids)):
            if array.dtype.kind not in "iu":
                raise ValueError(f"{where}: {name} must hold integers, got dtype {array.dtype}")
        if loss.dtype.kind != "f":
            raise ValueError(f"{where}: loss must be floating point, got dtype {loss.dtype}")
        if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= 2**31):
            raise ValueError(f"{where}: token_ids outside [0, 2**31)")
        if seq.size and seq.min() < 0:
            raise ValueError(f"{where}: seq (rows of tokens.bin) must be non-negative")
        # Copies: the caller may reuse its buffers as soon as write() returns.
        return _Batch(int(step), int(segment), seq.astype(np.int64), token_ids.copy(), loss.copy())

    # --- the background thread ----------------------------------------------------------------

    def _work(self) -> None:
        pending: list[_Batch] = []
        pending_rows = 0
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    self._write_part(pending)
                    return
                if isinstance(item, _Flush):
                    self._write_part(pending)
                    pending, pending_rows = [], 0
                    item.done.set()
                    continue
                if pending and (
                    item.segment != pending[-1].segment
                    or (pending_rows >= self.max_part_rows and item.step != pending[-1].step)
                ):
                    self._write_part(pending)
                    pending, pending_rows = [], 0
                pending.append(item)
                pending_rows += item.rows
        except BaseException as error:  # surfaced to the trainer by its next call
            self._error = error

    def _write_part(self, batches: list[_Batch]) -> None:
        if not batches:
            return
        started = time.perf_counter()
        segment, first_step = batches[0].segment, batches[0].step
        table = build_rows(batches)
        path = segment_dir(losses_root(self.lossdb_root), self.run, segment) / part_name(self.rank, first_step)
        # The part first, then its rollups: a part without rollups (for a moment, or after a crash)
        # is read raw by the views, while a rollup without its part would count rows that are not
        # in the table.
        write_parquet_atomic(table, path, row_group_size=ROW_GROUP_ROWS, **LOSS_PARQUET_OPTIONS)
        if self.rollups:
            columns = [table[name].to_numpy() for name in ("step", "position", "token_id", "loss")]
            write_rollups(self.lossdb_root, self.run, segment, self.rank, first_step, compute_rollups(*columns))
        self.stats.rows += table.num_rows
        self.stats.parts += 1
        self.stats.bytes += path.stat().st_size
        self.stats.busy_s += time.perf_counter() - started


def discard_after(lossdb_root: Path, run: str, step: int, rank: int | None = None) -> list[Path]:
    """Delete part files whose first_step > step (with their rollups) and all leftover temp files.

    Resume uses it for exactly-once: after restoring a checkpoint taken at `step` (flushed before
    it was saved), everything recorded after that step is dropped and will be recorded again.
    `rank=None` means every rank. Returns the deleted paths. No writer for this run (and rank)
    may be open meanwhile.
    """
    lossdb_root = Path(lossdb_root)
    check_run_name(run)
    # Rollups before parts: a crash in between must not leave a rollup without its part.
    roots = [rollups_root(lossdb_root, kind) for kind in ROLLUP_KINDS] + [losses_root(lossdb_root)]
    removed: list[Path] = []
    for root in roots:
        for part in iter_part_files(root, run=run, include_temp=True):
            if rank is not None and part.rank != rank:
                continue
            if part.is_temp or part.first_step > step:
                part.path.unlink(missing_ok=True)
                removed.append(part.path)
        remove_empty_dirs(root, run)
    return removed
