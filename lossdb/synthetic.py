"""Synthetic workspaces with known answers, for tests, benches and demos of the analyses.

`make_workspace(home, datasets, runs)` writes, under `home` (a workspace folder):

- `data/<dataset>/vocab.parquet` for each `SyntheticDataset`: token_id, text, count, rank,
  bucket, is_word_start (count = target occurrences, positions 1..seq_len, over the whole set;
  rank 0 = most frequent; buckets by DESIGN.md's rule, see `assign_buckets`). No tokens.bin.
- `runs/<run>/run.json` for each `SyntheticRun`: run, status, dataset, dataset_sha256, seed,
  tokens_trained, n_params, n_params_non_embedding, config (nested, like a resolved TOML),
  started_at, finished_at, device.
- the run's losses, written through `lossdb.writer.LossWriter` exactly as the trainer would
  (one writer per rank, rollups unless `rollups=False`).

Each run trains one epoch over a seeded permutation of the data set's sequences: global step s
takes `ranks * batch_size` sequences, rank r the r-th block of `batch_size` of them, so every
(seq, position) appears once. segment = tokens_before_step // segment_tokens.

Loss model (before noise and the writer's float16 rounding), see `synthetic_loss`:

    loss = quality * (2 + 1.5 / sqrt(1 + position))            # longer context, lower loss
                   * (1 + 0.6 * exp(-tokens_before / decay))    # learning; decay = run tokens / 3
                   * (0.7 + 0.6 * frequency_rank / vocab_size)  # rare tokens are harder
                   * (1.15 if word start else 1)                # word starts are harder
                   * (1 + noise * N(0, 1)), clipped at 0

so `quality` is a run's architecture effect (ratio to a baseline of quality 1 is ~quality),
and curves have the study's shapes (the word-start/sub-word ratio is 1.15 only among tokens of
equal frequency rank; over all tokens it also reflects which ids are word starts). With `keep_rows=True` the returned `SyntheticWorkspace`
holds every stored row as numpy columns (`RunRows`, losses already float16-rounded like the
table's), so a test can compute any expected curve with plain numpy loops; it also holds each
data set (`DatasetData`: tokens, vocab table), each run.json as written, and the writers' stats.
Use small sizes in tests (the defaults: 64 sequences of 16 tokens, 8 steps of 4 sequences ->
512 rows, 4 segments of 128 tokens).

Example:
    ws = make_workspace(tmp_path, [SyntheticDataset()], [SyntheticRun("base"), SyntheticRun("shift", quality=0.95)])
    con = lossdb.connect(tmp_path)
    rows = ws.runs["base"]   # rows.position, rows.loss, rows.segment, ...
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lossdb.writer import DEFAULT_MAX_PART_ROWS, LossWriter, WriterStats, round_to_float16

VOCAB_SCHEMA = pa.schema(
    [
        pa.field("token_id", pa.int32()),
        pa.field("text", pa.string()),
        pa.field("count", pa.int64()),
        pa.field("rank", pa.int32()),
        pa.field("bucket", pa.int32()),
        pa.field("is_word_start", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class SyntheticDataset:
    """A fake data set: Zipf-distributed token ids (ids shuffled, so id order != frequency)."""

    name: str = "synth"
    n_sequences: int = 64
    seq_len: int = 16
    vocab_size: int = 40
    bucket_tokens: int | None = None  # default: an eighth of all target tokens
    word_start_share: float = 0.6
    seed: int = 0


@dataclass(frozen=True)
class SyntheticRun:
    """A fake training run over one `SyntheticDataset` (by name)."""

    name: str
    dataset: str = "synth"
    seed: int = 0
    steps: int = 8
    batch_size: int = 4  # sequences per rank per step
    ranks: int = 1
    segment_tokens: int = 128
    quality: float = 1.0  # multiplies every loss
    noise: float = 0.05  # relative Gaussian noise on each loss
    rollups: bool = True
    status: str = "finished"
    flush_every: int | None = None  # flush every k steps (more, smaller part files)
    max_part_rows: int = DEFAULT_MAX_PART_ROWS
    config: Mapping[str, Any] = field(default_factory=dict)  # deep-merged into the default config


@dataclass
class DatasetData:
    spec: SyntheticDataset
    tokens: np.ndarray  # (n_sequences, seq_len + 1) int32
    vocab: pa.Table  # VOCAB_SCHEMA, sorted by token_id

    def column(self, name: str) -> np.ndarray:
        return self.vocab[name].to_numpy()


@dataclass
class RunRows:
    """Every row a synthetic run stored, in write order (rank-major within a step)."""

    step: np.ndarray
    seq: np.ndarray
    position: np.ndarray
    token_id: np.ndarray
    loss: np.ndarray  # float32, float16-rounded: exactly what the table holds
    segment: np.ndarray
    rank: np.ndarray


@dataclass
class SyntheticWorkspace:
    home: Path
    datasets: dict[str, DatasetData]
    runs: dict[str, RunRows | None]  # None when written with keep_rows=False
    run_json: dict[str, dict]
    writer_stats: dict[str, list[WriterStats]]  # per run, one per rank


def assign_buckets(counts: np.ndarray, bucket_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(rank, bucket) per token id, from target counts.

    Tokens sorted by count descending (ties by id) get ranks 0, 1, ...; walking that order, a new
    bucket starts after every token whose cumulative count crosses one or more multiples of
    `bucket_tokens` (so a very frequent token is a bucket of its own, and numbering has no gaps).
    """
    order = np.lexsort((np.arange(len(counts)), -counts))
    rank = np.empty(len(counts), dtype=np.int32)
    rank[order] = np.arange(len(counts), dtype=np.int32)
    bucket = np.empty(len(counts), dtype=np.int32)
    current, cumulative = 0, 0
    for token in order:
        bucket[token] = current
        before = cumulative
        cumulative += int(counts[token])
        if cumulative // bucket_tokens > before // bucket_tokens:
            current += 1
    return rank, bucket


def synthetic_loss(position, frequency_rank, is_word_start, tokens_before, decay_tokens, quality, vocab_size):
    """The noiseless loss model documented in the module docstring (numpy broadcasting)."""
    return (
        quality
        * (2.0 + 1.5 / np.sqrt(1.0 + position))
        * (1.0 + 0.6 * np.exp(-tokens_before / decay_tokens))
        * (0.7 + 0.6 * frequency_rank / vocab_size)
        * np.where(is_word_start, 1.15, 1.0)
    )


def make_dataset(home: Path, spec: SyntheticDataset) -> DatasetData:
    rng = np.random.default_rng(spec.seed)
    weights = 1.0 / np.arange(1, spec.vocab_size + 1) ** 1.1
    cdf = np.cumsum(weights / weights.sum())
    id_of_rank = rng.permutation(spec.vocab_size).astype(np.int32)  # frequent tokens get arbitrary ids
    tokens = np.empty((spec.n_sequences, spec.seq_len + 1), dtype=np.int32)
    counts = np.zeros(spec.vocab_size, dtype=np.int64)
    for start in range(0, spec.n_sequences, 4096):  # in chunks: bench-sized sets stay small in memory
        chunk = tokens[start : start + 4096]
        draws = np.minimum(np.searchsorted(cdf, rng.random(chunk.shape)), spec.vocab_size - 1)
        chunk[:] = id_of_rank[draws]
        counts += np.bincount(chunk[:, 1:].reshape(-1), minlength=spec.vocab_size)
    bucket_tokens = spec.bucket_tokens or max(1, counts.sum() // 8)
    rank, bucket = assign_buckets(counts, bucket_tokens)
    is_word_start = rng.random(spec.vocab_size) < spec.word_start_share
    text = [(" w" if ws else "s") + str(i) for i, ws in enumerate(is_word_start)]
    vocab = pa.Table.from_arrays(
        [
            pa.array(np.arange(spec.vocab_size, dtype=np.int32)),
            pa.array(text),
            pa.array(counts),
            pa.array(rank),
            pa.array(bucket),
            pa.array(is_word_start),
        ],
        schema=VOCAB_SCHEMA,
    )
    folder = Path(home) / "data" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(vocab, folder / "vocab.parquet")
    return DatasetData(spec=spec, tokens=tokens, vocab=vocab)


def _deep_merge(base: dict, overrides: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _run_json(spec: SyntheticRun, data: DatasetData) -> dict:
    seq_len = data.spec.seq_len
    config = _deep_merge(
        {
            "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "pos_encoding": "rope"},
            "data": {"dataset": spec.dataset, "seq_len": seq_len},
            "optim": {"lr": 1e-3},
            "train": {"seed": spec.seed, "batch_size": spec.batch_size * spec.ranks, "max_steps": spec.steps},
            "lossdb": {"record": True, "segment_tokens": spec.segment_tokens},
        },
        spec.config,
    )
    d_model, n_layer = config["model"]["d_model"], config["model"]["n_layer"]
    non_embedding = 12 * n_layer * d_model**2
    return {
        "run": spec.name,
        "status": spec.status,
        "dataset": spec.dataset,
        "dataset_sha256": hashlib.sha256(data.tokens.tobytes()).hexdigest(),
        "seed": spec.seed,
        "tokens_trained": spec.steps * spec.ranks * spec.batch_size * seq_len,
        "n_params": non_embedding + data.spec.vocab_size * d_model,
        "n_params_non_embedding": non_embedding,
        "config": config,
        "started_at": "2025-01-01T00:00:00+00:00",
        "finished_at": "2025-01-01T01:00:00+00:00" if spec.status == "finished" else None,
        "device": "synthetic",
    }


def write_run(
    home: Path, spec: SyntheticRun, data: DatasetData, keep_rows: bool = True
) -> tuple[RunRows | None, dict, list[WriterStats]]:
    """Write one run's losses (through LossWriter) and run.json; return its rows (or None), run.json
    and the writers' stats."""
    seq_len, n_seq = data.spec.seq_len, data.spec.n_sequences
    rows_per_step = spec.ranks * spec.batch_size
    if spec.steps * rows_per_step > n_seq:
        raise ValueError(
            f"synthetic run {spec.name!r}: {spec.steps} steps x {rows_per_step} sequences exceed the "
            f"{n_seq} sequences of data set {data.spec.name!r} (each sequence is trained once)"
        )
    rng = np.random.default_rng([spec.seed, 1])
    order = rng.permutation(n_seq)
    frequency_rank = data.column("rank").astype(np.float64)
    is_word_start = data.column("is_word_start")
    decay_tokens = spec.steps * rows_per_step * seq_len / 3
    position = np.arange(seq_len)  # (T,)
    kept: dict[str, list] = {k: [] for k in RunRows.__dataclass_fields__}
    writers = [
        LossWriter(Path(home) / "lossdb", spec.name, rank=r, rollups=spec.rollups, max_part_rows=spec.max_part_rows)
        for r in range(spec.ranks)
    ]
    try:
        for step in range(spec.steps):
            tokens_before = step * rows_per_step * seq_len
            segment = tokens_before // spec.segment_tokens
            for r, writer in enumerate(writers):
                start = step * rows_per_step + r * spec.batch_size
                seq = order[start : start + spec.batch_size]  # (B,)
                targets = data.tokens[seq, 1:]  # (B, T)
                loss = synthetic_loss(
                    position[None, :], frequency_rank[targets], is_word_start[targets],
                    tokens_before, decay_tokens, spec.quality, data.spec.vocab_size,
                )  # (B, T)
                loss = np.maximum(loss * (1 + spec.noise * rng.standard_normal(loss.shape)), 0).astype(np.float32)
                writer.write(step, segment, seq, targets, loss)
                if keep_rows:
                    n = targets.size
                    kept["step"].append(np.full(n, step))
                    kept["seq"].append(np.repeat(seq, seq_len))
                    kept["position"].append(np.tile(position, len(seq)))
                    kept["token_id"].append(targets.reshape(-1))
                    kept["loss"].append(round_to_float16(loss).reshape(-1))
                    kept["segment"].append(np.full(n, segment))
                    kept["rank"].append(np.full(n, r))
            if spec.flush_every and (step + 1) % spec.flush_every == 0:
                for writer in writers:
                    writer.flush()
    finally:
        for writer in writers:
            writer.close()
    info = _run_json(spec, data)
    run_folder = Path(home) / "runs" / spec.name
    run_folder.mkdir(parents=True, exist_ok=True)
    (run_folder / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    rows = RunRows(**{k: np.concatenate(v) for k, v in kept.items()}) if keep_rows else None
    return rows, info, [writer.stats for writer in writers]


def make_workspace(
    home: Path,
    datasets: Sequence[SyntheticDataset] = (SyntheticDataset(),),
    runs: Sequence[SyntheticRun] = (SyntheticRun("base"),),
    keep_rows: bool = True,
) -> SyntheticWorkspace:
    """Write data sets, then runs, under `home`; see the module docstring."""
    home = Path(home)
    data = {spec.name: make_dataset(home, spec) for spec in datasets}
    rows, infos, stats = {}, {}, {}
    for spec in runs:
        if spec.dataset not in data:
            raise ValueError(f"synthetic run {spec.name!r} names data set {spec.dataset!r}, not among {sorted(data)}")
        rows[spec.name], infos[spec.name], stats[spec.name] = write_run(home, spec, data[spec.dataset], keep_rows)
    return SyntheticWorkspace(home=home, datasets=data, runs=rows, run_json=infos, writer_stats=stats)
