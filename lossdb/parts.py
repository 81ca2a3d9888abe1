"""Part files on disk: atomic writes, listing and deletion. pyarrow + standard library only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from lossdb.schema import PARQUET_COMPRESSION, PART_NAME, SEGMENT_DIR, TEMP_NAME, temp_name


@dataclass(frozen=True)
class PartFile:
    """One `part-<rank>-<first_step>.parquet` (or its temp file) under `<root>/run=<run>/segment=<k>/`."""

    path: Path
    run: str
    segment: int
    rank: int
    first_step: int
    is_temp: bool = False


def write_parquet_atomic(table: pa.Table, path: Path, **parquet_options) -> None:
    """Write `table` to a hidden temp file next to `path`, fsync it, then rename it to `path`.

    A reader (a DuckDB glob over `part-*.parquet`) sees either no file or the whole file, never a
    torn one; a crash leaves at most a temp file, which `discard_after` removes. Refuses to replace
    an existing file: an existing part means the same steps would be recorded twice.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(
            f"{path} already exists: refusing to record these steps twice "
            "(on resume, call lossdb.writer.discard_after first; flush only between steps)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name, f"{os.getpid()}"))
    options = {"compression": PARQUET_COMPRESSION, **parquet_options}
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, **options)
            f.flush()
            os.fsync(f.fileno())  # the rename must not become visible before the data
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def iter_part_files(table_root: Path, run: str | None = None, include_temp: bool = False) -> Iterator[PartFile]:
    """Part files under `table_root` (a losses/ or rollups/<kind>/ folder), sorted by path.

    Files and folders that do not follow the naming scheme are skipped.
    """
    table_root = Path(table_root)
    run_dirs = [table_root / f"run={run}"] if run is not None else sorted(table_root.glob("run=*"))
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            continue
        run_name = run_dir.name[len("run="):]
        for seg_dir in sorted(run_dir.iterdir()):
            seg_match = SEGMENT_DIR.match(seg_dir.name)
            if not seg_match or not seg_dir.is_dir():
                continue
            for path in sorted(seg_dir.iterdir()):
                match = PART_NAME.match(path.name)
                is_temp = False
                if not match and include_temp:
                    match = TEMP_NAME.match(path.name)
                    is_temp = True
                if match:
                    yield PartFile(
                        path=path,
                        run=run_name,
                        segment=int(seg_match["segment"]),
                        rank=int(match["rank"]),
                        first_step=int(match["first_step"]),
                        is_temp=is_temp,
                    )


def remove_empty_dirs(table_root: Path, run: str) -> None:
    """Remove empty `segment=<k>` folders (and the `run=<run>` folder if it ends up empty)."""
    run_dir = Path(table_root) / f"run={run}"
    if not run_dir.is_dir():
        return
    for seg_dir in run_dir.iterdir():
        if seg_dir.is_dir() and not any(seg_dir.iterdir()):
            seg_dir.rmdir()
    if not any(run_dir.iterdir()):
        run_dir.rmdir()
