"""Rollups: per-part sums and counts by position, by token id and by step.

The writer computes them from each part it writes (np.bincount with weights: a few ms per part);
`build_missing_rollups` computes them from raw part files that lack them (e.g. a table copied
in from elsewhere). Both go through `compute_rollups`, so the two paths give identical files.
The DuckDB views add the rollups of all parts up and fall back to the raw table for runs without
rollups (lossdb/sql/30_sums.sql). pyarrow + numpy only: the trainer imports this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lossdb.parts import PartFile, iter_part_files, write_parquet_atomic
from lossdb.schema import ROLLUP_KINDS, ROLLUP_SCHEMAS, losses_root, part_name, rollups_root, segment_dir


def _sums_by(keys: np.ndarray, loss: np.ndarray, offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key, sum of loss, count) for every key present; keys are small non-negative ints after -offset."""
    shifted = keys.astype(np.int64) - offset
    counts = np.bincount(shifted)
    sums = np.bincount(shifted, weights=loss.astype(np.float64), minlength=len(counts))
    present = np.flatnonzero(counts)
    return present + offset, sums[present], counts[present].astype(np.int64)


def compute_rollups(step: np.ndarray, position: np.ndarray, token_id: np.ndarray, loss: np.ndarray) -> dict[str, pa.Table]:
    """Rollup tables {"position", "token", "step"} of one part's rows (1-D arrays, equal length)."""
    first_step = int(step.min()) if len(step) else 0
    keyed = {
        "position": _sums_by(position, loss),
        "token": _sums_by(token_id, loss),
        "step": _sums_by(step, loss, offset=first_step),  # steps are consecutive: keep bincount short
    }
    tables = {}
    for kind, (key, loss_sum, n) in keyed.items():
        schema = ROLLUP_SCHEMAS[kind]
        key_type = schema.field(0).type.to_pandas_dtype()
        tables[kind] = pa.Table.from_arrays(
            [pa.array(key.astype(key_type)), pa.array(loss_sum), pa.array(n)], schema=schema
        )
    return tables


def rollup_paths(lossdb_root: Path, run: str, segment: int, rank: int, first_step: int) -> dict[str, Path]:
    """Where the rollups of part `part-<rank>-<first_step>` of (run, segment) live, by kind."""
    name = part_name(rank, first_step)
    return {kind: segment_dir(rollups_root(lossdb_root, kind), run, segment) / name for kind in ROLLUP_KINDS}


def write_rollups(lossdb_root: Path, run: str, segment: int, rank: int, first_step: int, tables: dict[str, pa.Table]) -> None:
    for kind, path in rollup_paths(lossdb_root, run, segment, rank, first_step).items():
        write_parquet_atomic(tables[kind], path)


@dataclass(frozen=True)
class RollupReport:
    parts_seen: int
    parts_built: int
    runs_built: tuple[str, ...]


def build_missing_rollups(lossdb_root: Path, runs: Iterable[str] | None = None, force: bool = False) -> RollupReport:
    """Write rollups for every raw part file that lacks one of them (all of them when `force`).

    `runs` limits the work to those runs (all runs when None). A run named but absent from the
    loss table is an error. Existing rollups of a part are replaced only when `force` is set.
    """
    table_root = losses_root(lossdb_root)
    if runs is None:
        parts = list(iter_part_files(table_root))
    else:
        parts = []
        for run in runs:
            run_parts = list(iter_part_files(table_root, run=run))
            if not run_parts:
                raise ValueError(f"run {run!r} has no part files under {table_root}")
            parts.extend(run_parts)
    built_runs: list[str] = []
    n_built = 0
    for part in parts:
        paths = rollup_paths(lossdb_root, part.run, part.segment, part.rank, part.first_step)
        if not force and all(p.exists() for p in paths.values()):
            continue
        _rebuild_part_rollups(lossdb_root, part, paths)
        n_built += 1
        if part.run not in built_runs:
            built_runs.append(part.run)
    return RollupReport(parts_seen=len(parts), parts_built=n_built, runs_built=tuple(built_runs))


def _rebuild_part_rollups(lossdb_root: Path, part: PartFile, paths: dict[str, Path]) -> None:
    columns = pq.read_table(part.path, columns=["step", "position", "token_id", "loss"])
    tables = compute_rollups(*(columns[name].to_numpy() for name in ["step", "position", "token_id", "loss"]))
    for path in paths.values():
        path.unlink(missing_ok=True)  # meanwhile the views read this part raw
    write_rollups(lossdb_root, part.run, part.segment, part.rank, part.first_step, tables)
