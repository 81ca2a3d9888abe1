"""Releases: some runs' losses as a self-describing folder (`cli.py export`), and a check of one.

A release `DIR/` holds:

    README.md                           a Hugging Face dataset card: one config per run, "all"
                                        (the default) and "runs"; the schema with units; sizes
    SHA256SUMS                          sha256sum format over every other file (`sha256sum -c SHA256SUMS`)
    runs.parquet                        one row per run: run.json's fields, the resolved config
                                        flattened into columns (`model.n_layer`, ...), rows and bytes
    data/run=<run>/part-00000.parquet   the loss rows (RELEASE_SCHEMA), zstd, shards of at most
                                        ~max_shard_bytes, ordered by segment, then part (step, rank)
    datasets/<dataset>/vocab.parquet    the vocabulary of each data set used, and its manifest.json
                                        and tokenizer/ folder when the workspace has them

`run` and `segment` are real columns as well as (for `run`) the folder name: `datasets` and other
readers that ignore folder names still see them; hive readers (DuckDB, polars, Spark) also prune by
the folder. Spark's partition discovery types a folder value that looks like a number (`run=123`)
as an integer, overriding the column: read with `spark.read.schema(spark_ddl(RELEASE_SCHEMA))`.
`data/*/*.parquet` is every run; `data/run=<run>/*.parquet` one run.

Export streams: it reads the workspace's part files batch by batch and writes row groups of
`row_group_rows` rows, so memory depends on the row group size, never on a run's size. It writes
into a hidden temporary folder next to DIR, verifies it, and renames it into place only then.
A run whose run.json says `running` (training, or stopped and resumable) is refused: its rows are
not final. `verify_release` re-checks a release (sums, schema, row counts = tokens_trained,
exactly-once) and returns one line per problem.

Storage (bench/bench_export.py): loss values are FLOAT rounded to float16 precision, written with
BYTE_STREAM_SPLIT in pages of up to 2**18 rows and zstd level 1. pyarrow's default cap of 20,000
rows per page leaves zstd too little of each byte stream to learn from (2.1 bytes per loss value
instead of 1.7), and dictionary encoding packs the ~20K distinct values into 15-bit codes that
zstd cannot shrink (1.86). Row groups of 4M rows keep the token id dictionary's cost per row small.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from lossdb.parts import PartFile, iter_part_files
from lossdb.schema import LOSS_PARQUET_OPTIONS, LOSS_SCHEMA, RUN_NAME, check_run_name, losses_root

# The loss table's columns (DESIGN.md), then the two hive keys as real columns.
RELEASE_SCHEMA = pa.schema(
    list(LOSS_SCHEMA)
    + [
        pa.field("run", pa.string(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),
    ]
)

DEFAULT_MAX_SHARD_BYTES = 512 * 2**20
DEFAULT_ROW_GROUP_ROWS = 1 << 22  # 4M rows: ~13 MB on disk; export peaks at ~370 MB RSS on any run size
READ_BATCH_ROWS = 1 << 16
DUPLICATE_CHECK_ROWS = 50_000_000  # rows per DuckDB pass of the exactly-once check (bounds its spill)
VERIFY_MEMORY_LIMIT = "256MB"  # DuckDB spills the rest to a temp folder (measured: no slower on 20M rows)

# The live table's encoding, with the release's extra partition columns dictionary-encoded too.
PARQUET_OPTIONS = {**LOSS_PARQUET_OPTIONS,
                   "use_dictionary": [*LOSS_PARQUET_OPTIONS["use_dictionary"], "run", "segment"]}

README, SUMS, RUNS = "README.md", "SHA256SUMS", "runs.parquet"
DATA_DIR, DATASETS_DIR = "data", "datasets"
ALL_CONFIG, RUNS_CONFIG = "all", "runs"  # dataset card configs besides one per run
VOCAB, MANIFEST, TOKENIZER_DIR = "vocab.parquet", "manifest.json", "tokenizer"

# run.json fields copied into runs.parquet (when present), in this order, before the config.
RUN_FIELDS = (
    "run", "status", "dataset", "dataset_sha256", "seed", "tokens_trained", "n_params",
    "n_params_non_embedding", "steps", "total_steps", "tokens_per_step", "world_size", "device",
    "git_commit", "git_dirty", "tokens_per_s", "started_at", "finished_at",
)
SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
SIZE_CATEGORIES = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]


class ExportError(ValueError):
    """An export that cannot be made; the message is one line naming the run, file or value."""


@dataclass
class RunSource:
    """One run to export: its run.json, part files and data set folder in the workspace."""

    run: str
    info: dict
    parts: list[PartFile]
    rows: int
    dataset: str
    dataset_dir: Path

    @property
    def config(self) -> dict:
        return self.info.get("config") or {}

    @property
    def seq_len(self) -> int | None:
        for section in ("model", "data"):
            value = (self.config.get(section) or {}).get("seq_len")
            if isinstance(value, int) and value > 0:
                return value
        manifest = self.dataset_dir / MANIFEST
        return json.loads(manifest.read_text()).get("seq_len") if manifest.is_file() else None

    @property
    def segment_tokens(self) -> int | None:
        return self.info.get("segment_tokens") or (self.config.get("lossdb") or {}).get("segment_tokens")


@dataclass
class RunExport:
    """What the release holds of one run."""

    run: str
    rows: int = 0
    bytes: int = 0
    shards: list[str] = field(default_factory=list)  # paths relative to the release
    segments: int = 0


@dataclass
class ExportResult:
    out: Path
    runs: list[RunExport]
    bytes: int  # every file of the release
    notes: list[str]  # what the release lacks (e.g. a data set without tokenizer/), also in README.md


# --- choosing what to export ----------------------------------------------------------------------


def _safe_component(kind: str, name: str) -> str:
    if not isinstance(name, str) or not RUN_NAME.match(name):
        raise ExportError(f"{kind} name {name!r} cannot be a folder of the release: use letters, digits and . _ + -")
    return name


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def gather_run(home: Path, run: str) -> RunSource:
    """Read and check what exporting `run` needs; ExportError says what is missing or unfinished."""
    try:
        check_run_name(run)
    except ValueError as error:
        raise ExportError(str(error)) from None
    if run in (ALL_CONFIG, RUNS_CONFIG):
        raise ExportError(f"run {run!r}: the name clashes with the release's {run!r} config; export it under another name")
    info_path = home / "runs" / run / "run.json"
    if not info_path.is_file():
        have = sorted(p.parent.name for p in (home / "runs").glob("*/run.json"))
        raise ExportError(f"run {run!r}: no {info_path} (runs in this workspace: {', '.join(have) or 'none'})")
    info = _read_json(info_path)
    status = info.get("status")
    if status == "running":
        raise ExportError(
            f"run {run!r} has status 'running' in {info_path}: it is still training, or was stopped and can "
            f"continue (python cli.py train --resume --run {run}); export it once it has finished"
        )
    if status not in ("finished", "failed"):
        raise ExportError(f"{info_path}: status {status!r}, expected 'finished' or 'failed'")
    tokens = info.get("tokens_trained")
    if not isinstance(tokens, int) or tokens < 0:
        raise ExportError(f"{info_path}: tokens_trained {tokens!r} is not a token count")
    parts = sorted(iter_part_files(losses_root(home / "lossdb"), run=run), key=lambda p: (p.segment, p.first_step, p.rank))
    if not parts:
        raise ExportError(f"run {run!r}: no loss rows under {losses_root(home / 'lossdb') / f'run={run}'} "
                          "(was it trained with [lossdb] record = false?)")
    rows = 0
    for part in parts:
        try:
            rows += pq.ParquetFile(part.path).metadata.num_rows
        except (OSError, pa.ArrowException) as error:
            raise ExportError(f"{part.path}: cannot be read as Parquet ({_one_line(error)})") from None
    if rows != tokens:
        raise ExportError(
            f"run {run!r}: the loss table holds {rows:,} rows but {info_path} says tokens_trained = {tokens:,}; "
            "a release needs every trained token exactly once (part files missing, or extra?)"
        )
    dataset = info.get("dataset")
    if not dataset:
        raise ExportError(f"{info_path}: no 'dataset': cannot tell which vocabulary the token ids belong to")
    dataset_dir = home / "data" / _safe_component("data set", dataset)
    if not (dataset_dir / VOCAB).is_file():
        raise ExportError(f"run {run!r}: its data set has no {dataset_dir / VOCAB}: the release could not decode token ids")
    manifest = dataset_dir / MANIFEST
    if manifest.is_file():
        built = _read_json(manifest).get("sha256")
        if info.get("dataset_sha256") and built and built != info["dataset_sha256"]:
            raise ExportError(
                f"run {run!r} trained on data set {dataset!r} with sha256 {info['dataset_sha256'][:12]}, but "
                f"{manifest} now says {built[:12]}: the data set was rebuilt, its vocabulary may not match the run"
            )
    return RunSource(run=run, info=info, parts=parts, rows=rows, dataset=dataset, dataset_dir=dataset_dir)


def _check_same_builds(sources: Sequence[RunSource]) -> None:
    seen: dict[str, RunSource] = {}
    for source in sources:
        other = seen.setdefault(source.dataset, source)
        a, b = other.info.get("dataset_sha256"), source.info.get("dataset_sha256")
        if a and b and a != b:
            raise ExportError(
                f"runs {other.run!r} and {source.run!r} trained on different builds of data set {source.dataset!r} "
                f"(sha256 {a[:12]} vs {b[:12]}); export them as separate releases"
            )


# --- the loss rows --------------------------------------------------------------------------------


def _part_batches(part: PartFile) -> Iterator[pa.RecordBatch]:
    """A part file's rows in LOSS_SCHEMA's types, batch by batch."""
    parquet = pq.ParquetFile(part.path)
    missing = [name for name in LOSS_SCHEMA.names if name not in parquet.schema_arrow.names]
    if missing:
        raise ExportError(f"{part.path}: no column(s) {', '.join(missing)}; expected {', '.join(LOSS_SCHEMA.names)}")
    for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=LOSS_SCHEMA.names):
        yield pa.RecordBatch.from_arrays([batch.column(f.name).cast(f.type) for f in LOSS_SCHEMA], schema=LOSS_SCHEMA)


def _release_batches(source: RunSource) -> Iterator[pa.RecordBatch]:
    """The run's rows in RELEASE_SCHEMA, part by part and batch by batch (never a whole part)."""
    for part in source.parts:
        batches = _part_batches(part)
        while True:
            try:  # a damaged part shows up only here, once its pages are decoded
                batch = next(batches, None)
            except (OSError, pa.ArrowException) as error:
                raise ExportError(f"{part.path}: cannot be read ({_one_line(error)})") from None
            if batch is None:
                break
            n = batch.num_rows
            extra = [pa.repeat(pa.scalar(source.run), n), pa.repeat(pa.scalar(part.segment, pa.int32()), n)]
            yield pa.RecordBatch.from_arrays(batch.columns + extra, schema=RELEASE_SCHEMA)


class ShardWriter:
    """Writes one run's rows as `part-NNNNN.parquet` shards in `folder`.

    Row groups of `row_group_rows` rows; a shard is closed before a row group would take it past
    `max_shard_bytes`, judging by the size of the row group before (so a shard is at most about
    that size; a single row group larger than the limit still makes a shard of its own).
    """

    def __init__(self, folder: Path, max_shard_bytes: int, row_group_rows: int):
        self.folder = Path(folder)
        self.max_shard_bytes = max_shard_bytes
        self.row_group_rows = row_group_rows
        self.paths: list[Path] = []
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._file = None
        self._writer: pq.ParquetWriter | None = None
        self._last_group_bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        while self._pending_rows >= self.row_group_rows:
            self._write_group(self.row_group_rows)

    def close(self) -> list[Path]:
        if self._pending_rows:
            self._write_group(self._pending_rows)
        self._close_shard()
        return self.paths

    def _write_group(self, n: int) -> None:
        table = pa.Table.from_batches(self._pending, schema=RELEASE_SCHEMA)
        group, rest = table.slice(0, n), table.slice(n)
        self._pending, self._pending_rows = rest.to_batches(), rest.num_rows
        if self._writer is not None and self._file.tell() + self._last_group_bytes > self.max_shard_bytes:
            self._close_shard()
        if self._writer is None:
            path = self.folder / f"part-{len(self.paths):05d}.parquet"
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "wb")
            self._writer = pq.ParquetWriter(self._file, RELEASE_SCHEMA, **PARQUET_OPTIONS)
            self.paths.append(path)
        before = self._file.tell()
        self._writer.write_table(group, row_group_size=n)
        self._last_group_bytes = self._file.tell() - before
        self.rows += n

    def abort(self) -> None:
        """Close the open file without writing what is pending (after an error)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except (OSError, pa.ArrowException):
                pass
            self._file.close()
            self._writer, self._file = None, None

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._writer, self._file = None, None


def write_run_shards(source: RunSource, out: Path, *, max_shard_bytes: int, row_group_rows: int,
                     progress=None) -> RunExport:
    """Stream `source`'s rows into `out/data/run=<run>/`; `progress` (a tqdm bar) is advanced by rows."""
    writer = ShardWriter(out / DATA_DIR / f"run={source.run}", max_shard_bytes, row_group_rows)
    try:
        for batch in _release_batches(source):
            writer.write(batch)
            if progress is not None:
                progress.update(batch.num_rows)
        paths = writer.close()
    except BaseException:
        writer.abort()  # the caller deletes the temporary folder
        raise
    if writer.rows != source.rows:
        raise ExportError(f"run {source.run!r}: wrote {writer.rows:,} rows, its part files' metadata says {source.rows:,}")
    return RunExport(
        run=source.run,
        rows=writer.rows,
        bytes=sum(p.stat().st_size for p in paths),
        shards=[p.relative_to(out).as_posix() for p in paths],
        segments=len({p.segment for p in source.parts}),
    )


# --- runs.parquet ---------------------------------------------------------------------------------


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_layer": 2}} -> {"model.n_layer": 2}; lists and empty tables stay values."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _column(values: list) -> pa.Array:
    """A typed column when the values are scalars of one kind, else text (JSON for lists and tables)."""
    if all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
        try:
            array = pa.array(values)
            if not pa.types.is_null(array.type):
                return array
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())


def runs_table(sources: Sequence[RunSource], exports: Sequence[RunExport]) -> pa.Table:
    """One row per run: run.json's fields, seq_len, segment_tokens, rows, shards, bytes, the config
    flattened (`config.model.n_layer` is column `model.n_layer`), and config/run.json as JSON text."""
    columns: dict[str, list] = {}

    def put(name: str, values: list) -> None:
        columns[name] = values

    for name in RUN_FIELDS:
        if name == "run" or any(name in s.info for s in sources):
            put(name, [s.run if name == "run" else s.info.get(name) for s in sources])
    put("seq_len", [s.seq_len for s in sources])
    put("segment_tokens", [s.segment_tokens for s in sources])
    put("rows", [e.rows for e in exports])
    put("shards", [len(e.shards) for e in exports])
    put("bytes", [e.bytes for e in exports])
    flat = [flatten(s.config) for s in sources]
    for key in dict.fromkeys(k for f in flat for k in f):  # first-seen order: the TOML's order
        if key not in columns:
            put(key, [f.get(key) for f in flat])
    put("config_json", [json.dumps(s.config) for s in sources])
    put("run_json", [json.dumps(s.info) for s in sources])
    return pa.table({name: _column(values) for name, values in columns.items()})


# --- data set files -------------------------------------------------------------------------------


def copy_dataset(source: RunSource, out: Path) -> list[str]:
    """Copy vocab.parquet, manifest.json and tokenizer/ of the run's data set; returns notes on what is missing."""
    target = out / DATASETS_DIR / source.dataset
    if target.exists():
        return []
    target.mkdir(parents=True)
    shutil.copy2(source.dataset_dir / VOCAB, target / VOCAB)
    notes = []
    if (source.dataset_dir / MANIFEST).is_file():
        shutil.copy2(source.dataset_dir / MANIFEST, target / MANIFEST)
    else:
        notes.append(f"data set {source.dataset!r} has no {MANIFEST} in the workspace: the release does not say how it was built")
    if (source.dataset_dir / TOKENIZER_DIR).is_dir():
        shutil.copytree(source.dataset_dir / TOKENIZER_DIR, target / TOKENIZER_DIR)
    else:
        notes.append(f"data set {source.dataset!r} has no {TOKENIZER_DIR}/ folder: decode ids with vocab.parquet's text column")
    return notes


# --- sums -----------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def release_files(folder: Path) -> list[str]:
    """Every file of the release but SHA256SUMS, as sorted POSIX paths relative to `folder`."""
    folder = Path(folder)
    paths = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(path for path in paths if path != SUMS)


def write_sums(folder: Path) -> Path:
    """(Re)write `folder/SHA256SUMS` over every other file, in `sha256sum` format."""
    folder = Path(folder)
    lines = [f"{sha256_file(folder / path)}  {path}\n" for path in release_files(folder)]
    path = folder / SUMS
    path.write_text("".join(lines))
    return path


# --- the dataset card -----------------------------------------------------------------------------


def _size_category(rows: int) -> str:
    for limit, label in SIZE_CATEGORIES:
        if rows < limit:
            return label
    return "n>1T"


def _yaml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML scalar


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


def spark_ddl(schema: pa.Schema) -> str:
    """The schema as Spark DDL ("step INT, seq BIGINT, ..."), for `spark.read.schema(...)`."""
    names = {pa.int16(): "SMALLINT", pa.int32(): "INT", pa.int64(): "BIGINT", pa.float32(): "FLOAT",
             pa.float64(): "DOUBLE", pa.string(): "STRING"}
    return ", ".join(f"{f.name} {names[f.type]}" for f in schema)


def dataset_card(name: str, sources: Sequence[RunSource], exports: Sequence[RunExport], notes: Sequence[str]) -> str:
    """README.md: YAML header (configs with data_files globs) and the card's text."""
    total_rows = sum(e.rows for e in exports)
    total_bytes = sum(e.bytes for e in exports)
    configs = [(ALL_CONFIG, f"{DATA_DIR}/*/*.parquet", True)]
    configs += [(s.run, f"{DATA_DIR}/run={s.run}/*.parquet", False) for s in sources]
    configs.append((RUNS_CONFIG, RUNS, False))
    header = ["---", f"pretty_name: {_yaml_str(name)}", "tags:", "- language-modeling", "- per-token-loss",
              "- training-dynamics", "size_categories:", f"- {_size_category(total_rows)}", "configs:"]
    for config, path, default in configs:
        header.append(f"- config_name: {_yaml_str(config)}")
        if default:
            header.append("  default: true")
        header += ["  data_files:", "  - split: train", f"    path: {_yaml_str(path)}"]
    header.append("---")

    first = sources[0].run
    run_rows = []
    for s, e in zip(sources, exports):
        model = s.config.get("model") or {}
        shape = ", ".join(f"{k}={model[k]}" for k in ("n_layer", "n_head", "d_model", "pos", "pos_encoding", "shift")
                          if model.get(k) not in (None, [], False))
        params = s.info.get("n_params")
        run_rows.append(
            f"| `{s.run}` | {s.info.get('status')} | `{s.dataset}` | {shape or '-'} | "
            f"{f'{params:,}' if isinstance(params, int) else '-'} | {s.info.get('seed', '-')} | {e.rows:,} | "
            f"{s.segment_tokens if s.segment_tokens else '-'} | {len(e.shards)} | {_human_bytes(e.bytes)} | "
            f"{e.bytes / max(e.rows, 1):.2f} |"
        )
    datasets = sorted({s.dataset for s in sources})
    schema_ddl = spark_ddl(RELEASE_SCHEMA)
    lines = [
        *header,
        f"# {name}",
        "",
        "The training loss of **every token** of each run below: one row per (run, trained token), recorded "
        "during training by configaformer from the training forward pass.",
        "",
        "## Runs",
        "",
        "| run | status | data set | model | parameters | seed | tokens (rows) | segment tokens | shards | size | bytes/token |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *run_rows,
        "",
        f"In all: {total_rows:,} rows in {_human_bytes(total_bytes)} of Parquet "
        f"({total_bytes / max(total_rows, 1):.2f} bytes per token). `runs.parquet` has each run's full resolved "
        "config as columns (`model.n_layer`, `optim.lr`, ...), its parameter counts, seed, data set and sha256, "
        "and `run_json` (device, versions, git commit, timings).",
        "",
        "## Schema (`data/run=<run>/part-*.parquet`)",
        "",
        "| column | type | meaning |",
        "|---|---|---|",
        "| `step` | int32 | optimizer step (0-based) in which the token was trained on |",
        "| `seq` | int64 | row of the data set's `tokens.bin` (its sequence index) |",
        "| `position` | int16 | 0-based position of the target in the sequence, 0..seq_len-1; the model saw "
        "`position + 1` tokens (its context) when predicting it |",
        "| `token_id` | int32 | the target token, `tokens[seq, position + 1]`; decode with the data set's "
        "`vocab.parquet` (`text`) or its `tokenizer/` |",
        "| `loss` | float32 | cross-entropy of the target in **nats** (natural log), rounded to float16 precision |",
        "| `run` | string | the run's name (also the folder name `run=<run>`) |",
        "| `segment` | int32 | training segment: `tokens trained before this step // segment_tokens` (see the runs "
        "table), so segment 0 is the start of training; curves are usually drawn per segment |",
        "",
        "Each trained token appears exactly once per run: (`seq`, `position`) is unique within a run, and a run "
        "has `tokens_trained` rows (`runs.parquet`). Rows are ordered by segment, then by the trainer's part "
        "files (step, then rank). A sequence's first token (`tokens[seq, 0]`) is context only and never a target.",
        "",
        "## How the losses were produced",
        "",
        "Each run trains a GPT-style model (config in `runs.parquet`) for one pass over a seeded permutation of "
        "its data set's sequences. In every optimizer step, the per-token cross-entropy of the training forward "
        "pass (before that step's update, `reduction='none'`) is copied to the host and written, by a background "
        "writer, to Parquet; a resumed run drops what was recorded after its checkpoint, so no token is counted "
        "twice. Losses are stored as float32 values rounded to float16 precision (11 significant bits, about 3 decimal digits; every "
        "engine reads FLOAT, not every engine reads FLOAT16).",
        "",
        "## Data sets (`datasets/<name>/`)",
        "",
        "`vocab.parquet` (token_id, text, count, rank, bucket, is_word_start) gives each id's text and its "
        "frequency bucket; `manifest.json` says how the data set was built (source, tokenizer, seq_len, sha256 of "
        "tokens.bin, bucket rule); `tokenizer/` decodes ids offline. Data sets here: "
        + ", ".join(f"`{d}`" for d in datasets) + ".",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        'everything = load_dataset("path/to/release", split="train")            # config "all"',
        f'one_run = load_dataset("path/to/release", "{first}", split="train")',
        'runs = load_dataset("path/to/release", "runs", split="train")',
        f'rows = load_dataset("parquet", data_files="path/to/release/data/run={first}/*.parquet", split="train")',
        "```",
        "",
        "```sql",
        "-- duckdb (CLI or Python), from the release folder",
        "SELECT run, segment, position, avg(loss) AS mean_loss, count(*) AS n",
        "FROM 'data/*/*.parquet' GROUP BY ALL ORDER BY ALL;",
        f"-- by frequency bucket of the target token (run {first} trained on data set {sources[0].dataset})",
        "SELECT l.segment, v.bucket, avg(l.loss) AS mean_loss, count(*) AS n",
        f"FROM 'data/run={first}/*.parquet' l JOIN 'datasets/{sources[0].dataset}/vocab.parquet' v USING (token_id)",
        "GROUP BY ALL ORDER BY ALL;",
        "```",
        "",
        "```python",
        "import polars as pl",
        'losses = pl.scan_parquet("data/*/*.parquet")',
        "",
        "# PySpark: give the schema, so a run named like a number stays a string",
        f'df = spark.read.schema("{schema_ddl}").parquet("data")',
        "```",
        "",
        "## Files and integrity",
        "",
        "`SHA256SUMS` lists every file: `sha256sum -c SHA256SUMS`. configaformer's "
        "`python cli.py export --verify DIR` also checks the schema, row counts and exactly-once.",
    ]
    if notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines += ["", f"Exported {created}."]
    return "\n".join(lines) + "\n"


# --- export ---------------------------------------------------------------------------------------


def _check_out(home: Path, out: Path, force: bool) -> None:
    if out == home or home.is_relative_to(out):
        raise ExportError(f"--out {out} holds the workspace {home}: choose a folder of its own")
    for inside in ("lossdb", "runs", "data"):
        if out.is_relative_to(home / inside):
            raise ExportError(f"--out {out} is inside the workspace's {inside}/ folder: choose another folder")
    if out.exists() and not force:
        raise ExportError(f"{out} exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")


def export_release(
    home: str | os.PathLike,
    runs: Sequence[str],
    out: str | os.PathLike,
    *,
    name: str | None = None,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    progress: bool = True,
    verify: bool = True,
) -> ExportResult:
    """Write a release of `runs` from the workspace at `home` to `out` (see the module docstring).

    Nothing appears at `out` unless the whole release was written (and, with verify=True, passed
    `verify_release`); with force=True an existing `out` is replaced only then.
    """
    home, out = Path(home).resolve(), Path(out).resolve()
    runs = [r.strip() for r in runs if r.strip()]
    if not runs:
        raise ExportError("no runs to export: pass --runs A,B")
    duplicates = sorted({r for r in runs if runs.count(r) > 1})
    if duplicates:
        raise ExportError(f"--runs names {', '.join(duplicates)} more than once")
    if max_shard_bytes <= 0 or row_group_rows <= 0:
        raise ExportError("max_shard_bytes and row_group_rows must be positive")
    _check_out(home, out, force)
    sources = [gather_run(home, run) for run in runs]
    _check_same_builds(sources)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        from tqdm import tqdm

        exports, notes = [], []
        with tqdm(total=sum(s.rows for s in sources), unit="rows", unit_scale=True, desc="export",
                  disable=not progress, smoothing=0.1) as bar:
            for source in sources:
                bar.set_postfix_str(source.run)
                exports.append(write_run_shards(source, tmp, max_shard_bytes=max_shard_bytes,
                                                row_group_rows=row_group_rows, progress=bar))
                notes += copy_dataset(source, tmp)
        pq.write_table(runs_table(sources, exports), tmp / RUNS, compression="zstd")
        (tmp / README).write_text(dataset_card(name or out.name, sources, exports, notes))
        write_sums(tmp)
        if verify:
            problems = verify_release(tmp)
            if problems:
                raise ExportError(f"the written release failed verification: {problems[0]}"
                                  + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        total = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out=out, runs=exports, bytes=total, notes=notes)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and deleted after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- verify ---------------------------------------------------------------------------------------


def _one_line(error: BaseException | str) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines)[:300]


def _sql_string(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _check_sums(folder: Path) -> list[str]:
    sums = folder / SUMS
    if not sums.is_file():
        return [f"{SUMS} is missing: the files' integrity cannot be checked"]
    problems, listed = [], {}
    for number, line in enumerate(sums.read_text().splitlines(), 1):
        match = SUM_LINE.match(line)
        if not match:
            problems.append(f"{SUMS} line {number}: expected '<sha256>  <path>', got {line[:80]!r}")
            continue
        path = match[2]
        if path.startswith("/") or ".." in Path(path).parts:
            problems.append(f"{SUMS} line {number}: {path!r} is outside the release")
            continue
        listed[path] = match[1]
    on_disk = set(release_files(folder))
    for path, expected in sorted(listed.items()):
        if path not in on_disk:
            problems.append(f"{path}: missing (listed in {SUMS})")
            continue
        actual = sha256_file(folder / path)
        if actual != expected:
            problems.append(f"{path}: checksum mismatch ({SUMS} has {expected[:12]}..., the file has "
                            f"{actual[:12]}...): the file changed or is corrupt")
    for path in sorted(on_disk - listed.keys()):
        problems.append(f"{path}: not listed in {SUMS}")
    return problems


def _schema_problems(schema: pa.Schema) -> list[str]:
    problems = []
    for expected in RELEASE_SCHEMA:
        if expected.name not in schema.names:
            problems.append(f"no column {expected.name}")
        elif not schema.field(expected.name).type.equals(expected.type):
            problems.append(f"column {expected.name} is {schema.field(expected.name).type}, expected {expected.type}")
    extra = [n for n in schema.names if n not in RELEASE_SCHEMA.names]
    if extra:
        problems.append(f"unexpected column(s) {', '.join(extra)}")
    return problems


def _check_run(folder: Path, run: str, tokens_trained, seq_len) -> list[str]:
    """Shards of one run: readable, schema, row count, values in range, exactly-once."""
    where = f"{DATA_DIR}/run={run}/"
    shards = sorted((folder / DATA_DIR / f"run={run}").glob("*.parquet"))
    if not shards:
        return [f"run {run!r}: no shards in {where}"]
    if not isinstance(tokens_trained, int):
        return [f"run {run!r}: {RUNS} has no token count (tokens_trained = {tokens_trained!r})"]
    problems, readable, rows = [], [], 0
    for shard in shards:
        rel = shard.relative_to(folder).as_posix()
        try:
            parquet = pq.ParquetFile(shard)
            schema_problems = _schema_problems(parquet.schema_arrow)
        except (OSError, pa.ArrowException) as error:
            problems.append(f"{rel}: cannot be read as Parquet ({_one_line(error)})")
            continue
        if schema_problems:
            problems.append(f"{rel}: schema differs from the release schema: {'; '.join(schema_problems)}")
            continue
        readable.append(shard)
        rows += parquet.metadata.num_rows
    if len(readable) == len(shards) and rows != tokens_trained:
        problems.append(f"run {run!r}: {rows:,} rows in {where}, but {RUNS} says tokens_trained = {tokens_trained:,}")
    if readable:
        problems += _check_values(run, readable, rows, seq_len)
    return problems


def _check_values(run: str, shards: list[Path], rows: int, seq_len) -> list[str]:
    """DuckDB passes over the shards: the run column, ranges, and no (seq, position) twice."""
    import duckdb

    source = "read_parquet([" + ", ".join(_sql_string(p) for p in shards) + "])"
    upper = f"OR position >= {int(seq_len)}" if seq_len else ""
    problems = []
    with tempfile.TemporaryDirectory(prefix="lossdb-verify-") as spill:
        con = duckdb.connect(config={"temp_directory": spill, "memory_limit": VERIFY_MEMORY_LIMIT})
        try:
            wrong_run, bad_position, bad_loss, bad_other = con.sql(
                f"SELECT count(*) FILTER (WHERE run IS DISTINCT FROM {_sql_string(run)}), "
                f"count(*) FILTER (WHERE position < 0 {upper}), "
                "count(*) FILTER (WHERE NOT (loss >= 0 AND isfinite(loss))), "
                f"count(*) FILTER (WHERE step < 0 OR seq < 0 OR token_id < 0 OR segment < 0) FROM {source}"
            ).fetchall()[0]
            where = f"run {run!r}:"
            if wrong_run:
                problems.append(f"{where} {wrong_run:,} rows in {DATA_DIR}/run={run}/ have another value in column run")
            if bad_position:
                allowed = f"0..{int(seq_len) - 1} (seq_len {seq_len})" if seq_len else "0.."
                problems.append(f"{where} {bad_position:,} rows have a position outside {allowed}")
            if bad_loss:
                problems.append(f"{where} {bad_loss:,} rows have a negative, NaN or infinite loss")
            if bad_other:
                problems.append(f"{where} {bad_other:,} rows have a negative step, seq, token_id or segment")
            # Exactly once, in passes over slices of seq so the hash table stays small on any run size.
            passes = max(1, math.ceil(rows / DUPLICATE_CHECK_ROWS))
            pairs = extra = 0
            first = None
            for i in range(passes):
                n_pairs, n_extra, pair = con.sql(
                    f"WITH counted AS (SELECT seq, position, count(*) AS n FROM {source} "
                    f"WHERE seq % {passes} = {i} GROUP BY seq, position HAVING count(*) > 1) "
                    "SELECT count(*), coalesce(sum(n - 1), 0), min({'seq': seq, 'position': position}) FROM counted"
                ).fetchall()[0]
                pairs, extra = pairs + n_pairs, extra + int(n_extra)
                if pair is not None and (first is None or (pair["seq"], pair["position"]) < first):
                    first = (pair["seq"], pair["position"])
            if pairs:
                problems.append(f"{where} {pairs:,} (seq, position) pairs appear more than once ({extra:,} extra rows), "
                                f"the first at seq {first[0]}, position {first[1]}: a token is recorded twice")
        except duckdb.Error as error:
            problems.append(f"run {run!r}: DuckDB could not read its shards: {_one_line(error)}")
        finally:
            con.close()
    return problems


def verify_release(folder: str | os.PathLike) -> list[str]:
    """Re-check a release; returns one line per problem (empty: all is well).

    Checks: every file against SHA256SUMS (and no file unlisted), runs.parquet, each run's shards
    (readable, RELEASE_SCHEMA, rows = tokens_trained, run column = folder, values in range, no
    (seq, position) twice), no shards of runs missing from runs.parquet, each data set's vocab.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: no such folder"]
    problems = _check_sums(folder)
    if not (folder / README).is_file():
        problems.append(f"{README} is missing: the release has no dataset card")
    try:
        runs = pq.read_table(folder / RUNS).to_pylist()
    except (OSError, pa.ArrowException) as error:
        return problems + [f"{RUNS}: cannot be read ({_one_line(error)}): the runs cannot be checked"]
    for column in ("run", "dataset", "tokens_trained"):
        if runs and column not in runs[0]:
            return problems + [f"{RUNS}: no column {column!r}: the runs cannot be checked"]
    if not runs:
        problems.append(f"{RUNS}: no runs")
    for row in runs:
        if not isinstance(row["run"], str) or not RUN_NAME.match(row["run"]):
            problems.append(f"{RUNS}: run name {row['run']!r} is not a plain name (letters, digits, . _ + -)")
            continue
        problems += _check_run(folder, row["run"], row["tokens_trained"], row.get("seq_len"))
    known = {row["run"] for row in runs}
    for run_dir in sorted((folder / DATA_DIR).glob("*")):
        if run_dir.name.removeprefix("run=") not in known:
            problems.append(f"{DATA_DIR}/{run_dir.name}/: not a run of {RUNS}")
    for dataset in sorted({row["dataset"] for row in runs if isinstance(row["dataset"], str)}):
        if not RUN_NAME.match(dataset) or not (folder / DATASETS_DIR / dataset / VOCAB).is_file():
            problems.append(f"{DATASETS_DIR}/{dataset}/{VOCAB}: missing, so token ids of its runs cannot be decoded")
    return problems


def summarize(result: ExportResult) -> Iterable[str]:
    """Lines for the CLI: what was written where."""
    for run in result.runs:
        yield (f"run {run.run}: {run.rows:,} rows, {run.segments} segments, {len(run.shards)} shard(s), "
               f"{_human_bytes(run.bytes)} ({run.bytes / max(run.rows, 1):.2f} bytes/token)")
    for note in result.notes:
        yield f"note: {note}"
    yield f"wrote {result.out} ({_human_bytes(result.bytes)}); check it with: python cli.py export --verify {result.out}"
