"""The loss table's on-disk format: Arrow schemas and file layout (see DESIGN.md "The loss table").

Everything here is pyarrow + the standard library, so the trainer can import it on a GPU box.

Layout under `HOME/lossdb/`:

    losses/run=<run>/segment=<k>/part-<rank>-<first_step>.parquet        raw rows, LOSS_SCHEMA
    rollups/position/run=<run>/segment=<k>/part-<rank>-<first_step>.parquet   per position sums
    rollups/token/run=<run>/segment=<k>/part-<rank>-<first_step>.parquet      per token id sums
    rollups/step/run=<run>/segment=<k>/part-<rank>-<first_step>.parquet       per step sums

A rollup file has the same relative name as the part it summarises. Files are written under a
hidden temp name (`.part-...parquet.<pid>.tmp`) in the same folder and renamed, so a reader never
sees a torn file and the `part-*.parquet` glob never matches a temp file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

# Column types exactly as in DESIGN.md; `run` and `segment` are hive partition keys, not columns.
LOSS_SCHEMA = pa.schema(
    [
        pa.field("step", pa.int32(), nullable=False),  # optimizer step (0-based)
        pa.field("seq", pa.int64(), nullable=False),  # row of tokens.bin
        pa.field("position", pa.int16(), nullable=False),  # 0..seq_len-1
        pa.field("token_id", pa.int32(), nullable=False),  # target token, tokens[seq, position + 1]
        pa.field("loss", pa.float32(), nullable=False),  # nats, rounded to float16 precision
    ]
)

# Rollups: sums and counts that make every standard curve a sub-second query.
# loss_sum is the float64 sum of the (float16-rounded) losses, n the number of tokens.
ROLLUP_KINDS = ("position", "token", "step")
ROLLUP_KEY = {"position": "position", "token": "token_id", "step": "step"}
ROLLUP_SCHEMAS = {
    kind: pa.schema(
        [
            LOSS_SCHEMA.field(key),
            pa.field("loss_sum", pa.float64(), nullable=False),
            pa.field("n", pa.int64(), nullable=False),
        ]
    )
    for kind, key in ROLLUP_KEY.items()
}

PARQUET_COMPRESSION = "zstd"

# How loss rows are encoded, in the live table and in releases (measured on Zipf token ids and
# realistic losses: 3.2 bytes per token vs 3.5 with pyarrow's defaults). Byte-stream-split plus
# large pages is what shrinks the loss column (1.71 vs 2.10 bytes per value); zstd level 1 beats 3
# on these byte streams.
LOSS_PARQUET_OPTIONS = dict(
    compression=PARQUET_COMPRESSION,
    compression_level=1,
    use_dictionary=["step", "seq", "token_id"],
    column_encoding={"position": "DELTA_BINARY_PACKED", "loss": "BYTE_STREAM_SPLIT"},
    max_rows_per_page=1 << 18,
)
MAX_POSITIONS = 2**15 - 1  # position is INT16

PART_NAME = re.compile(r"^part-(?P<rank>\d+)-(?P<first_step>\d+)\.parquet$")
TEMP_NAME = re.compile(r"^\.part-(?P<rank>\d+)-(?P<first_step>\d+)\.parquet\..*\.tmp$")
SEGMENT_DIR = re.compile(r"^segment=(?P<segment>\d+)$")

# Hive partition values are URL-decoded by DuckDB and split on "=" and "/": keep run names plain.
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def check_run_name(run: str) -> str:
    """Return `run` if it is safe as a hive partition value, else raise a one-line ValueError."""
    if not isinstance(run, str) or not RUN_NAME.match(run):
        raise ValueError(
            f"run name {run!r} is not allowed in the loss table: use letters, digits and . _ + - "
            "(starting with a letter or digit)"
        )
    return run


def losses_root(lossdb_root: Path) -> Path:
    return Path(lossdb_root) / "losses"


def rollups_root(lossdb_root: Path, kind: str) -> Path:
    return Path(lossdb_root) / "rollups" / kind


def segment_dir(table_root: Path, run: str, segment: int) -> Path:
    """`<table_root>/run=<run>/segment=<k>`; segment written unpadded (DESIGN pitfall)."""
    return Path(table_root) / f"run={run}" / f"segment={int(segment)}"


def part_name(rank: int, first_step: int) -> str:
    return f"part-{int(rank)}-{int(first_step)}.parquet"


def temp_name(final_name: str, unique: str) -> str:
    """Hidden temp name in the same folder: starts with "." and ends with ".tmp"."""
    return f".{final_name}.{unique}.tmp"


def duckdb_type(arrow_type: pa.DataType) -> str:
    """The DuckDB SQL type for the Arrow types used in these schemas."""
    names = {
        pa.int16(): "SMALLINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
        pa.string(): "VARCHAR",
        pa.bool_(): "BOOLEAN",
    }
    return names[arrow_type]
