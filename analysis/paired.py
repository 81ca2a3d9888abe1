"""Paired per-token comparison of two runs that trained on the same data in the same order.

When runs A and B train on the same data set in the same order, every token is seen by both at
the same step in the same context, so its loss difference is a paired sample:

    delta = loss_B - loss_A        negative: B has the lower loss there (B helped)

    import lossdb
    from analysis import paired

    con = lossdb.connect(home)
    result = paired.pair_runs(con, "baseline", "shift")         # one pass over both runs
    paired.group_table(result, "position_bin")                    # mean delta with 95% CIs
    noise = paired.pair_runs(con, "baseline", "baseline-s2")      # the noise floor (two seeds)
    paired.summary_table(result, noise)

Refused (PairingError, one line): runs whose data set sha256 differs, whose data order differs
(run.json `order_sha256`, `runs/<run>/order.npy`), whose tokens per step differ, and, decisively,
any row where the two runs did not train the same sequence at the same step and position.

How (docs/paired.md has the details):
- Both runs' Parquet parts are in training order, so they are read side by side, row group by
  row group (a background thread per run reads ahead), checked row by row for equal step, seq
  and position, and zipped: a positional join, no hash table. Memory stays at a few row groups.
- Tokens within a sequence are correlated, so each analysis first sums delta per training
  sequence (the cluster) and group; the mean is total delta / tokens (a ratio estimator) and its
  standard error is the cluster-robust one from the variance over sequences (`estimate`).
  Intervals use Student's t with (sequences - 1) degrees of freedom.
- Per token id only sums (count, delta, delta^2, loss_A) are kept; their standard error treats
  occurrences as independent (`se_iid`), which is fine for ranking, not for testing.

The pass returns a `PairedResult` of sums per segment; tables pool any set of segments.
"""

from __future__ import annotations

import json
import math
import queue
import statistics
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import polars as pl

from lossdb.schema import PART_NAME, SEGMENT_DIR

LEVEL = 0.95  # confidence level of every interval
READ_AHEAD = 2  # row groups a reader thread keeps ready per run
GROUPINGS = ("segment", "position", "position_bin", "bucket", "word_start")


class PairingError(ValueError):
    """Two runs that cannot be paired; the message is one line naming the runs and what differs."""


# --- Student's t quantile (no scipy) -------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (df > 0), by bisection on `t_cdf`; the normal one past df 1e7."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if df > 1e7:
        return statistics.NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


# --- sums over sequences, and the estimate they give --------------------------------------------


@dataclass
class GroupSums:
    """Per-group sums over training sequences (the clusters), for the ratio estimator.

    For group g and sequence i: y_i = sum of delta over the sequence's tokens in g, n_i = how many
    there are. Kept: m = sequences with n_i > 0, n = sum n_i, y = sum y_i, yy = sum y_i^2,
    yn = sum y_i n_i, nn = sum n_i^2, loss_a = sum of loss_A over those tokens. Sums over
    disjoint sets of sequences add up (`merged`), so segments pool exactly.
    """

    m: np.ndarray
    n: np.ndarray
    y: np.ndarray
    yy: np.ndarray
    yn: np.ndarray
    nn: np.ndarray
    loss_a: np.ndarray

    FIELDS = ("m", "n", "y", "yy", "yn", "nn", "loss_a")

    @classmethod
    def zeros(cls, n_groups: int) -> "GroupSums":
        return cls(*(np.zeros(n_groups) for _ in cls.FIELDS))

    def add(self, y: np.ndarray, n: np.ndarray, loss_a: np.ndarray) -> None:
        """Add sequences: y (S, G) delta sums; n (S, G) counts, or (G,) when every sequence has the
        same count; loss_a (G,) summed loss_A of the same tokens."""
        if n.ndim == 1:  # the same n_g in every one of the S sequences
            s = y.shape[0]
            y_sum = y.sum(axis=0)
            self.m += s * (n > 0)
            self.n += s * n
            self.y += y_sum
            self.yy += np.einsum("ij,ij->j", y, y)
            self.yn += n * y_sum
            self.nn += s * n * n
        else:
            self.m += (n > 0).sum(axis=0)
            self.n += n.sum(axis=0)
            self.y += y.sum(axis=0)
            self.yy += np.einsum("ij,ij->j", y, y)
            self.yn += np.einsum("ij,ij->j", y, n)
            self.nn += np.einsum("ij,ij->j", n, n)
        self.loss_a += loss_a

    @staticmethod
    def merged(parts: Sequence["GroupSums"]) -> "GroupSums":
        width = max(len(p.n) for p in parts)
        total = GroupSums.zeros(width)
        for part in parts:
            for name in GroupSums.FIELDS:
                values = getattr(part, name)
                getattr(total, name)[: len(values)] += values
        return total


def estimate(sums: GroupSums, level: float = LEVEL) -> dict[str, np.ndarray]:
    """Mean delta per group with its cluster-robust standard error and `level` interval.

    mean = sum y_i / sum n_i (every paired token in the group weighs the same). Its variance is
    the linearized (delta-method) variance of a ratio estimator with sequences as the sampling
    units, i.e. the CR1 cluster-robust variance of an intercept-only regression:

        var = m / (m - 1) * sum_i (y_i - mean * n_i)^2 / (sum_i n_i)^2
        sum_i (y_i - mean n_i)^2 = yy - 2 mean yn + mean^2 nn

    interval = mean -/+ t(1 - (1 - level) / 2, m - 1) * se. NaN where m < 2.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sums.y / sums.n
        spread = np.maximum(sums.yy - 2 * mean * sums.yn + mean * mean * sums.nn, 0.0)
        var = sums.m / (sums.m - 1) * spread / (sums.n * sums.n)
        se = np.where(sums.m >= 2, np.sqrt(var), np.nan)
        mean_a = sums.loss_a / sums.n
    t = np.array([t_quantile(0.5 + level / 2, m - 1) if m >= 2 else np.nan for m in sums.m])
    return {
        "n_tokens": sums.n.astype(np.int64),
        "n_sequences": sums.m.astype(np.int64),
        "mean_a": mean_a,
        "mean_b": mean_a + mean,
        "mean_delta": mean,
        "se": se,
        "low": mean - t * se,
        "high": mean + t * se,
    }


@dataclass
class TokenSums:
    """Per token id: count, sum of delta, of delta^2 and of loss_A (no per-sequence sums)."""

    n: np.ndarray
    d: np.ndarray
    dd: np.ndarray
    loss_a: np.ndarray

    @classmethod
    def zeros(cls, n_ids: int) -> "TokenSums":
        return cls(np.zeros(n_ids), np.zeros(n_ids), np.zeros(n_ids), np.zeros(n_ids))

    def add(self, token_id: np.ndarray, delta: np.ndarray, loss_a: np.ndarray) -> None:
        width = max(len(self.n), int(token_id.max()) + 1 if token_id.size else 0)
        counts = [
            np.bincount(token_id, minlength=width),
            np.bincount(token_id, weights=delta, minlength=width),
            np.bincount(token_id, weights=delta * delta, minlength=width),
            np.bincount(token_id, weights=loss_a, minlength=width),
        ]
        for name, add in zip(("n", "d", "dd", "loss_a"), counts):
            values = getattr(self, name)
            if len(values) < width:
                values = np.concatenate([values, np.zeros(width - len(values))])
            values += add
            setattr(self, name, values)

    @staticmethod
    def merged(parts: Sequence["TokenSums"]) -> "TokenSums":
        width = max(len(p.n) for p in parts)
        total = TokenSums.zeros(width)
        for part in parts:
            for name in ("n", "d", "dd", "loss_a"):
                getattr(total, name)[: len(getattr(part, name))] += getattr(part, name)
        return total


def log_position_bins(seq_len: int) -> np.ndarray:
    """Bin starts 0, 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (two per octave) below `seq_len`.

    Bin k covers positions [starts[k], starts[k + 1]) and the last one ends at seq_len.
    """
    starts = {0}
    power = 1
    while power < seq_len:
        starts.update((power, power * 3 // 2 if power >= 2 else power))
        power *= 2
    return np.array(sorted(s for s in starts if s < seq_len), dtype=np.int64)


@dataclass
class VocabGroups:
    """Token id -> bucket and word start, from the data set's vocab.parquet (the `vocab` view)."""

    bucket: np.ndarray  # (V,) int64; -1 where unknown
    word_start: np.ndarray  # (V,) int64: 1 word start, 0 sub-word, -1 unknown
    n_buckets: int

    @property
    def n_ids(self) -> int:
        return len(self.bucket)


class PairAccumulator:
    """Sums of one pairing, per segment and grouping, fed with whole sequences (`add`)."""

    def __init__(self, seq_len: int, vocab: VocabGroups | None):
        self.seq_len = seq_len
        self.bin_starts = log_position_bins(seq_len)
        self.vocab = vocab
        self.groups: dict[str, dict[int, GroupSums]] = {name: {} for name in GROUPINGS}
        self.tokens: dict[int, TokenSums] = {}
        self.steps: dict[int, list[int]] = {}  # segment -> [first step, last step]
        self.rows = 0
        nb = vocab.n_buckets if vocab else 0
        self._widths = {
            "segment": 1,
            "position": seq_len,
            "position_bin": len(self.bin_starts),
            "bucket": nb,
            "word_start": 2,
        }
        if vocab is not None:
            # one combined code per id: bucket * 2 + word_start, unknown ids -> 2 * nb (dropped)
            known = (vocab.bucket >= 0) & (vocab.word_start >= 0)
            self._code = np.where(known, vocab.bucket * 2 + vocab.word_start, 2 * nb).astype(np.intp)

    def _sums(self, grouping: str, segment: int) -> GroupSums:
        found = self.groups[grouping].get(segment)
        if found is None:
            found = self.groups[grouping][segment] = GroupSums.zeros(self._widths[grouping])
        return found

    def add(self, segment: int, step: np.ndarray, token_id: np.ndarray, loss_a: np.ndarray, loss_b: np.ndarray) -> None:
        """Whole sequences of one segment: 1-D arrays of S * seq_len rows, sequence by sequence."""
        t = self.seq_len
        s = len(loss_a) // t
        if s * t != len(loss_a) or s == 0:
            raise ValueError(f"PairAccumulator.add: {len(loss_a)} rows are not whole sequences of {t}")
        delta = loss_b.astype(np.float64)
        delta -= loss_a  # exact: the difference of two float16-precise values
        la = loss_a.astype(np.float64)
        d2 = delta.reshape(s, t)  # (S, T)
        la_by_position = la.reshape(s, t).sum(axis=0)  # (T,)
        # every sequence has t tokens in its segment and one at each position
        self._sums("segment", segment).add(d2.sum(axis=1)[:, None], np.array([float(t)]), la_by_position.sum(keepdims=True))
        self._sums("position", segment).add(d2, np.ones(t), la_by_position)
        widths = np.diff(np.append(self.bin_starts, t)).astype(np.float64)
        self._sums("position_bin", segment).add(
            np.add.reduceat(d2, self.bin_starts, axis=1), widths, np.add.reduceat(la_by_position, self.bin_starts)
        )
        tokens = self.tokens.get(segment)
        if tokens is None:
            tokens = self.tokens[segment] = TokenSums.zeros(self.vocab.n_ids if self.vocab else 0)
        token_id = token_id.astype(np.intp)  # once: bincount and take convert other ints on every call
        tokens.add(token_id, delta, la)
        if self.vocab is not None:
            self._add_vocab_groups(segment, token_id, delta, s)
        first, last = int(step[0]), int(step[-1])
        span = self.steps.setdefault(segment, [first, last])
        span[0], span[1] = min(span[0], first), max(span[1], last)
        self.rows += len(loss_a)

    def _add_vocab_groups(self, segment: int, token_id: np.ndarray, delta: np.ndarray, s: int) -> None:
        nb = self.vocab.n_buckets
        width = 2 * nb + 1  # codes 0 .. 2nb-1, and 2nb for ids the vocabulary lacks
        if token_id.size and int(token_id.max()) >= len(self._code):
            code = np.full(int(token_id.max()) + 1, 2 * nb, dtype=np.intp)
            code[: len(self._code)] = self._code
            self._code = code
        key = self._code[token_id].reshape(s, self.seq_len)  # (S, T)
        key += (np.arange(s, dtype=np.intp) * width)[:, None]
        key = key.reshape(-1)
        y = np.bincount(key, weights=delta, minlength=s * width).reshape(s, width)[:, : 2 * nb]
        n = np.bincount(key, minlength=s * width).reshape(s, width)[:, : 2 * nb].astype(np.float64)
        y3, n3 = y.reshape(s, nb, 2), n.reshape(s, nb, 2)
        # loss_A sums of these groups come from the per-token sums in finish()
        self._sums("bucket", segment).add(y3.sum(axis=2), n3.sum(axis=2), np.zeros(nb))
        self._sums("word_start", segment).add(y3.sum(axis=1), n3.sum(axis=1), np.zeros(2))

    def finish(self) -> None:
        """Fill in loss_A sums of the vocabulary groups from the per-token sums (ids -> groups)."""
        if self.vocab is None:
            return
        nb = self.vocab.n_buckets
        for segment, tokens in self.tokens.items():
            code = self._code[: len(tokens.loss_a)]
            by_code = np.bincount(code, weights=tokens.loss_a[: len(code)], minlength=2 * nb + 1)[: 2 * nb]
            by_code = by_code.reshape(nb, 2)
            if segment in self.groups["bucket"]:
                self.groups["bucket"][segment].loss_a[:] = by_code.sum(axis=1)
                self.groups["word_start"][segment].loss_a[:] = by_code.sum(axis=0)


# --- run-level checks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """What run.json says about a run's data, and where its folder is."""

    run: str
    dataset: str | None
    dataset_sha256: str | None
    tokens_per_step: int | None
    total_steps: int | None
    order_sha256: str | None
    folder: Path | None

    @property
    def order_path(self) -> Path | None:
        return self.folder / "order.npy" if self.folder else None


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def run_info(con, run: str) -> RunInfo:
    """The run's RunInfo from its run.json (the source of the `runs` view); PairingError if the
    workspace has no such run."""
    found = con.sql(
        """SELECT CAST(json AS VARCHAR), filename FROM _run_json_files
           WHERE coalesce(json ->> '$.run', regexp_extract(filename, '([^/]+)/run\\.json$', 1)) = $run""",
        params={"run": run},
    ).fetchall()
    if not found:
        known = [r[0] for r in con.sql("SELECT run FROM runs WHERE run IS NOT NULL ORDER BY run").fetchall()]
        raise PairingError(f"unknown run {run!r}; known runs: {', '.join(known) or '(none)'}")
    text, filename = found[0]
    info = json.loads(text) if text else {}
    return RunInfo(
        run=run,
        dataset=info.get("dataset"),
        dataset_sha256=info.get("dataset_sha256"),
        tokens_per_step=_int_or_none(info.get("tokens_per_step")),
        total_steps=_int_or_none(info.get("total_steps")),
        order_sha256=info.get("order_sha256"),
        folder=Path(filename).parent if filename else None,
    )


def _load_order(path: Path | None) -> np.ndarray | None:
    """A run's order.npy (the rows it trains, in order), or None when absent or unreadable."""
    if path is None or not path.is_file():
        return None
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError):  # unreadable: the rows themselves still decide
        return None


def check_pair(a: RunInfo, b: RunInfo) -> list[str]:
    """Refuse (PairingError) pairs that run.json already shows cannot line up; return notes.

    The decisive check is on the rows themselves (`aligned_pairs`); these catch the common cases
    before any loss is read, with a message saying what differs.
    """
    pair = f"cannot pair runs {a.run!r} and {b.run!r}"
    if a.run == b.run:
        raise PairingError(f"{pair}: a run paired with itself has delta 0 everywhere; name two runs")
    for info in (a, b):
        if not info.dataset_sha256:
            raise PairingError(
                f"{pair}: runs/{info.run}/run.json has no dataset_sha256, so the data sets cannot be compared"
            )
    if a.dataset_sha256 != b.dataset_sha256:
        raise PairingError(
            f"{pair}: they trained different data sets ({a.run}: {a.dataset} sha256 {a.dataset_sha256[:12]}, "
            f"{b.run}: {b.dataset} sha256 {b.dataset_sha256[:12]})"
        )
    if a.tokens_per_step and b.tokens_per_step and a.tokens_per_step != b.tokens_per_step:
        raise PairingError(
            f"{pair}: their steps do not line up ({a.run} trains {a.tokens_per_step:,} tokens per step, "
            f"{b.run} {b.tokens_per_step:,})"
        )
    notes = []
    if a.order_sha256 and b.order_sha256 and a.order_sha256 == b.order_sha256:
        return notes
    orders = [info.order_path for info in (a, b)]
    loaded = [_load_order(path) for path in orders]
    if loaded[0] is not None and loaded[1] is not None:
        order_a, order_b = loaded
        common = min(len(order_a), len(order_b))
        differ = np.flatnonzero(np.asarray(order_a[:common]) != np.asarray(order_b[:common]))
        if differ.size:
            i = int(differ[0])
            raise PairingError(
                f"{pair}: their data order differs ({orders[0]} and {orders[1]} first differ at index {i:,}: "
                f"sequence {int(order_a[i])} vs {int(order_b[i])}); train both with the same train.data_seed"
            )
        if len(order_a) != len(order_b):
            notes.append(f"data orders agree on the first {common:,} sequences ({a.run} plans {len(order_a):,}, "
                         f"{b.run} {len(order_b):,})")
        return notes
    if (a.order_sha256 and b.order_sha256 and a.total_steps is not None and a.total_steps == b.total_steps):
        raise PairingError(
            f"{pair}: their data order differs (order_sha256 {a.order_sha256[:12]} vs {b.order_sha256[:12]}, "
            f"both {a.total_steps:,} steps); train both with the same train.data_seed"
        )
    return notes


# --- a run's rows in training order ------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    file: str
    segment: int
    rank: int
    first_step: int


@dataclass
class Rows:
    """Consecutive loss rows of one run, all in one segment (numpy views; token_id may be None)."""

    segment: int
    step: np.ndarray | None = None
    seq: np.ndarray | None = None
    position: np.ndarray | None = None
    loss: np.ndarray | None = None
    token_id: np.ndarray | None = None

    COLUMNS = ("step", "seq", "position", "loss", "token_id")

    def __len__(self) -> int:
        return len(next(getattr(self, c) for c in self.COLUMNS if getattr(self, c) is not None))

    def _map(self, fn) -> "Rows":
        return Rows(self.segment, *(None if getattr(self, c) is None else fn(getattr(self, c)) for c in self.COLUMNS))

    def __getitem__(self, index: slice) -> "Rows":
        return self._map(lambda values: values[index])

    def take(self, order: np.ndarray) -> "Rows":
        return self._map(lambda values: values[order])

    @staticmethod
    def concat(parts: Sequence["Rows"]) -> "Rows":
        first = parts[0]
        if len(parts) == 1:
            return first
        columns = [None if getattr(first, c) is None else np.concatenate([getattr(p, c) for p in parts]) for c in Rows.COLUMNS]
        return Rows(first.segment, *columns)


def run_parts(con, run: str, segments: Sequence[int] | None = None) -> list[Part]:
    """The run's part files now on disk (the `_loss_files` view), by segment, rank and first step."""
    found = con.sql(
        "SELECT file, part FROM _loss_files WHERE starts_with(part, $prefix)", params={"prefix": f"run={run}/"}
    ).fetchall()
    parts = []
    for file, part in found:
        pieces = part.split("/")
        seg, name = SEGMENT_DIR.match(pieces[1]), PART_NAME.match(pieces[2]) if len(pieces) == 3 else None
        if seg and name and (segments is None or int(seg["segment"]) in segments):
            parts.append(Part(file, int(seg["segment"]), int(name["rank"]), int(name["first_step"])))
    return sorted(parts, key=lambda p: (p.segment, p.first_step, p.rank))


def _row_groups(parts: Sequence[Part], columns: Sequence[str]) -> Iterator[Rows]:
    """Each row group of each part, in the given order, as zero-copy numpy views."""
    import pyarrow.parquet as pq

    for part in parts:
        reader = pq.ParquetFile(part.file)
        for i in range(reader.metadata.num_row_groups):
            table = reader.read_row_group(i, columns=list(columns))
            arrays = {}
            for name in columns:
                column = table.column(name)
                chunk = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
                arrays[name] = chunk.to_numpy(zero_copy_only=False)
            if table.num_rows:
                yield Rows(part.segment, **arrays)


def _merge_ranks(streams: list[Iterator[Rows]]) -> Iterator[Rows]:
    """Rows of several ranks of one segment in training order: step by step, rank 0's rows first.

    Each rank's rows are in step order; a step's rows of all ranks are taken once every rank has
    shown a later step (or ended), then ordered by step with a stable sort (ranks keep their order).
    """
    buffers: list[Rows | None] = [None] * len(streams)
    live = [True] * len(streams)

    def pull(r: int) -> None:
        piece = next(streams[r], None)
        if piece is None:
            live[r] = False
        else:
            buffers[r] = piece if buffers[r] is None or not len(buffers[r]) else Rows.concat([buffers[r], piece])

    while True:
        for r in range(len(streams)):
            if live[r] and (buffers[r] is None or not len(buffers[r])):
                pull(r)
        held = [b for b in buffers if b is not None and len(b)]
        if not held:
            return
        cut = max(min(int(b.step[-1]) for b in held), min(int(b.step[0]) for b in held) + 1)
        for r in range(len(streams)):  # every row of a step before `cut` is now buffered
            while live[r] and (buffers[r] is None or not len(buffers[r]) or buffers[r].step[-1] < cut):
                pull(r)
        taken = []
        for r, b in enumerate(buffers):
            if b is not None and len(b):
                k = int(np.searchsorted(b.step, cut, side="left"))
                taken.append(b[:k])
                buffers[r] = b[k:]
        merged = Rows.concat([t for t in taken if len(t)])
        yield merged.take(np.argsort(merged.step, kind="stable"))


def training_order(parts: Sequence[Part], columns: Sequence[str]) -> Iterator[Rows]:
    """A run's rows segment by segment in training order (step, then rank, then as written)."""
    by_segment: dict[int, dict[int, list[Part]]] = {}
    for part in parts:
        by_segment.setdefault(part.segment, {}).setdefault(part.rank, []).append(part)
    for segment in sorted(by_segment):
        ranks = by_segment[segment]
        if len(ranks) == 1:
            yield from _row_groups(next(iter(ranks.values())), columns)
        else:
            yield from _merge_ranks([_row_groups(ranks[r], columns) for r in sorted(ranks)])


_END = object()


def read_ahead(items: Iterator, depth: int = READ_AHEAD) -> Iterator:
    """`items` produced by a background thread, up to `depth` ahead (pyarrow decodes without the
    GIL, so reading overlaps the numpy work of the caller). Errors re-raise here, in order."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer
            put(error)

    thread = threading.Thread(target=work, name="paired-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# --- zipping two runs ------------------------------------------------------------------------------


def _first_difference(a: Rows, b: Rows) -> int:
    bad = (a.step != b.step) | (a.seq != b.seq) | (a.position != b.position)
    return int(np.flatnonzero(bad)[0])


def aligned_pairs(a_rows: Iterator[Rows], b_rows: Iterator[Rows], run_a: str, run_b: str, seq_len: int) -> Iterator[tuple[Rows, Rows]]:
    """Zip two runs' rows (a positional join), checking that each row has the same step, seq and
    position in both; yields (a, b) of equal length holding whole sequences of one segment (A's).

    Stops when either run ends (the other's extra steps are not paired). PairingError on the first
    row that differs: the runs' steps do not line up or their data order differs.
    """
    positions = np.arange(seq_len, dtype=np.int64)
    a = b = carry_a = carry_b = None
    while True:
        if a is None or not len(a):
            a = next(a_rows, None)
        if b is None or not len(b):
            b = next(b_rows, None)
        if a is None or b is None:
            break
        n = min(len(a), len(b))
        piece_a, piece_b, a, b = a[:n], b[:n], a[n:], b[n:]
        if not (np.array_equal(piece_a.step, piece_b.step) and np.array_equal(piece_a.seq, piece_b.seq)
                and np.array_equal(piece_a.position, piece_b.position)):
            i = _first_difference(piece_a, piece_b)
            sa, sb = int(piece_a.step[i]), int(piece_b.step[i])
            what = "their steps do not line up" if sa != sb else "their data order differs"
            raise PairingError(
                f"cannot pair runs {run_a!r} and {run_b!r}: {what} ({run_a} has step {sa} seq {int(piece_a.seq[i])} "
                f"position {int(piece_a.position[i])} where {run_b} has step {sb} seq {int(piece_b.seq[i])} "
                f"position {int(piece_b.position[i])})"
            )
        if carry_a is not None:  # the start of a sequence cut off at the end of the last piece
            if carry_a.segment != piece_a.segment:
                raise PairingError(f"run {run_a!r}: a sequence at step {int(carry_a.step[0])} crosses segments")
            piece_a, piece_b = Rows.concat([carry_a, piece_a]), Rows.concat([carry_b, piece_b])
        whole = len(piece_a) // seq_len * seq_len
        carry_a, carry_b = (piece_a[whole:], piece_b[whole:]) if whole < len(piece_a) else (None, None)
        if not whole:
            continue
        piece_a, piece_b = piece_a[:whole], piece_b[:whole]
        if not (piece_a.position.reshape(-1, seq_len) == positions).all():
            i = int(np.flatnonzero(piece_a.position.reshape(-1, seq_len) != positions)[0])
            raise PairingError(
                f"run {run_a!r}: rows at step {int(piece_a.step[i])} seq {int(piece_a.seq[i])} are not whole "
                f"sequences of positions 0..{seq_len - 1} in order"
            )
        yield piece_a, piece_b
    if carry_a is not None:
        raise PairingError(
            f"runs {run_a!r}/{run_b!r}: the paired rows end inside a sequence (step {int(carry_a.step[0])} "
            f"seq {int(carry_a.seq[0])})"
        )


# --- the pass ------------------------------------------------------------------------------------


@dataclass
class PairedResult:
    """Sums of one pairing (A vs B) per segment; tables and charts are built from it."""

    run_a: str
    run_b: str
    dataset: str | None
    dataset_sha256: str | None
    seq_len: int
    bin_starts: np.ndarray
    groups: dict[str, dict[int, GroupSums]]
    tokens: dict[int, TokenSums]
    steps: dict[int, list[int]]  # segment -> [first, last] paired step
    rows: int
    rows_a: int
    rows_b: int
    notes: list[str] = field(default_factory=list)
    vocab: pl.DataFrame | None = None  # token_id, text, bucket, is_word_start

    @property
    def label(self) -> str:
        return f"{self.run_a} → {self.run_b}"

    @property
    def segments(self) -> list[int]:
        return sorted(self.steps)


def load_vocab(con, dataset: str | None) -> pl.DataFrame | None:
    """The data set's vocabulary (token_id, text, bucket, is_word_start), or None without one."""
    if dataset is None:
        return None
    vocab = con.sql(
        "SELECT token_id, text, bucket, is_word_start FROM vocab WHERE dataset = $dataset ORDER BY token_id",
        params={"dataset": dataset},
    ).pl()
    return vocab if vocab.height else None


def vocab_groups(vocab: pl.DataFrame | None) -> VocabGroups | None:
    if vocab is None:
        return None
    n_ids = int(vocab["token_id"].max()) + 1
    bucket = np.full(n_ids, -1, dtype=np.int64)
    word_start = np.full(n_ids, -1, dtype=np.int64)
    ids = vocab["token_id"].to_numpy()
    bucket[ids] = vocab["bucket"].fill_null(-1).to_numpy()
    word_start[ids] = vocab["is_word_start"].cast(pl.Int64).fill_null(-1).to_numpy()
    return VocabGroups(bucket=bucket, word_start=word_start, n_buckets=int(max(bucket.max(), -1)) + 1)


def _total_rows(parts: Sequence[Part]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p.file).metadata.num_rows for p in parts)


def _seq_len(parts: Sequence[Part], run: str) -> int:
    """seq_len from the run's first row group: positions 0..T-1 of its first sequences."""
    first = next(_row_groups(parts[:1], ["position"]), None)
    if first is None:
        raise PairingError(f"run {run!r} has no loss rows")
    return int(first.position.max()) + 1


def pair_runs(con, run_a: str, run_b: str, segments: Sequence[int] | None = None) -> PairedResult:
    """One pass over both runs' losses: every grouping's sums per segment (see the module doc).

    `segments` limits the pass to those segments (all when None). Raises PairingError (a
    ValueError) when the runs cannot be paired.
    """
    info_a, info_b = run_info(con, run_a), run_info(con, run_b)
    notes = check_pair(info_a, info_b)
    parts_a, parts_b = run_parts(con, run_a, segments), run_parts(con, run_b, segments)
    for run, parts in ((run_a, parts_a), (run_b, parts_b)):
        if not parts:
            where = f" in segments {', '.join(map(str, segments))}" if segments is not None else ""
            raise PairingError(f"run {run!r} has no loss rows{where}")
    seq_len = _seq_len(parts_a, run_a)
    vocab = load_vocab(con, info_a.dataset)
    acc = PairAccumulator(seq_len, vocab_groups(vocab))
    a_rows = read_ahead(training_order(parts_a, ["step", "seq", "position", "loss", "token_id"]))
    b_rows = read_ahead(training_order(parts_b, ["step", "seq", "position", "loss"]))
    try:
        for a, b in aligned_pairs(a_rows, b_rows, run_a, run_b, seq_len):
            acc.add(a.segment, a.step, a.token_id, a.loss, b.loss)
    finally:
        a_rows.close()
        b_rows.close()
    acc.finish()
    rows_a, rows_b = _total_rows(parts_a), _total_rows(parts_b)
    if acc.rows == 0:
        raise PairingError(f"runs {run_a!r} and {run_b!r} have no rows in common")
    for run, total in ((run_a, rows_a), (run_b, rows_b)):
        if total > acc.rows:
            notes.append(f"{run} has {total - acc.rows:,} rows past the last paired step (not compared)")
    return PairedResult(
        run_a=run_a, run_b=run_b, dataset=info_a.dataset, dataset_sha256=info_a.dataset_sha256, seq_len=seq_len, bin_starts=acc.bin_starts,
        groups=acc.groups, tokens=acc.tokens, steps=acc.steps, rows=acc.rows, rows_a=rows_a, rows_b=rows_b,
        notes=notes, vocab=vocab,
    )


# --- tables ------------------------------------------------------------------------------------------

KEY_COLUMNS = {
    "segment": ["segment"],
    "position": ["position"],
    "position_bin": ["position_start", "position_end", "position_mid"],
    "bucket": ["bucket"],
    "word_start": ["word_start"],
}
STAT_COLUMNS = ["n_tokens", "n_sequences", "mean_a", "mean_b", "mean_delta", "se", "low", "high"]
COLUMN_TYPES = {
    "run_a": pl.String, "run_b": pl.String, "segment": pl.Int64, "position": pl.Int64, "position_start": pl.Int64,
    "position_end": pl.Int64, "position_mid": pl.Float64, "bucket": pl.Int64, "word_start": pl.Boolean,
    "n_tokens": pl.Int64, "n_sequences": pl.Int64,
}


def _chosen(result: PairedResult, segments: Sequence[int] | None) -> list[int]:
    if segments is None:
        return result.segments
    missing = [s for s in segments if s not in result.steps]
    if missing:
        raise ValueError(f"segment(s) {', '.join(map(str, missing))} not paired; paired: "
                         f"{', '.join(map(str, result.segments))}")
    return list(segments)


def _keys(result: PairedResult, by: str, width: int) -> dict[str, np.ndarray]:
    if by == "position":
        return {"position": np.arange(width)}
    if by == "position_bin":
        starts = result.bin_starts
        ends = np.append(starts[1:], result.seq_len)  # exclusive
        return {"position_start": starts, "position_end": ends - 1, "position_mid": (starts + ends - 1) / 2}
    if by == "bucket":
        return {"bucket": np.arange(width)}
    if by == "word_start":
        return {"word_start": np.array([False, True])}
    raise ValueError(f"unknown grouping {by!r}; choose one of {', '.join(GROUPINGS)}")


def group_table(
    result: PairedResult, by: str, segments: Sequence[int] | None = None, per_segment: bool = False, level: float = LEVEL
) -> pl.DataFrame:
    """Mean delta with its `level` interval per group of `by` (a name in GROUPINGS).

    Pooled over `segments` (all paired ones when None), or one row set per segment when
    `per_segment`. by="segment" always gives one row per segment. Groups without tokens are left out.
    Columns: run_a, run_b, [segment], key columns (KEY_COLUMNS[by]), then STAT_COLUMNS.
    """
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; choose one of {', '.join(GROUPINGS)}")
    chosen = _chosen(result, segments)
    per_segment = per_segment or by == "segment"
    if per_segment:
        blocks = [(seg, result.groups[by][seg]) for seg in chosen if seg in result.groups[by]]
    else:
        found = [result.groups[by][seg] for seg in chosen if seg in result.groups[by]]
        blocks = [(None, GroupSums.merged(found))] if found else []
    frames = []
    for seg, sums in blocks:
        stats = estimate(sums, level)
        width = len(sums.n)
        columns: dict[str, object] = {}
        if seg is not None:
            columns["segment"] = np.full(width, seg)
        if by != "segment":
            columns.update(_keys(result, by, width))
        columns.update(stats)
        frames.append(pl.DataFrame(columns).filter(pl.col("n_tokens") > 0))
    schema_cols = (["segment"] if per_segment else []) + ([] if by == "segment" else KEY_COLUMNS[by]) + STAT_COLUMNS
    if not frames:  # e.g. buckets of a data set without vocab.parquet
        return pl.DataFrame(schema={c: COLUMN_TYPES.get(c, pl.Float64) for c in ["run_a", "run_b", *schema_cols]})
    return pl.concat(frames).select(
        pl.lit(result.run_a).alias("run_a"), pl.lit(result.run_b).alias("run_b"), *schema_cols
    )


def overall(result: PairedResult, segments: Sequence[int] | None = None, level: float = LEVEL) -> dict:
    """Every paired token of `segments` (all when None) pooled: one row of STAT_COLUMNS as a dict."""
    chosen = _chosen(result, segments)
    sums = GroupSums.merged([result.groups["segment"][s] for s in chosen])
    return {k: v[0].item() for k, v in estimate(sums, level).items()}


def summary_table(
    result: PairedResult, noise: PairedResult | None = None, segments: Sequence[int] | None = None, level: float = LEVEL
) -> pl.DataFrame:
    """One row per: all tokens, each segment, word starts, sub-words; beside it the noise pair.

    Columns: group, n_tokens, mean_a, mean_b, mean_delta, low, high, and with `noise`:
    noise_delta, noise_low, noise_high (the same group of the noise pair; segments by number).
    """
    def rows(res: PairedResult, chosen_segments) -> list[dict]:
        out = [{"group": "all tokens", **overall(res, chosen_segments, level)}]
        by_segment = group_table(res, "segment", chosen_segments, level=level)
        for row in by_segment.iter_rows(named=True):
            steps = res.steps[row["segment"]]
            out.append({"group": f"segment {row['segment']} (steps {steps[0]}-{steps[1]})", **row})
        for row in group_table(res, "word_start", chosen_segments, level=level).iter_rows(named=True):
            out.append({"group": "word start" if row["word_start"] else "sub-word", **row})
        return out

    columns = ["group", "n_tokens", "mean_a", "mean_b", "mean_delta", "low", "high"]
    main = pl.DataFrame([{c: r[c] for c in columns} for r in rows(result, _chosen(result, segments))])
    if noise is None:
        return main
    noise_segments = [s for s in _chosen(result, segments) if s in noise.steps] if segments is not None else None
    noise_rows = rows(noise, noise_segments)

    def key(group: str) -> str:  # segments match by number; their step ranges may differ
        return group.split(" (")[0]

    noise_df = pl.DataFrame(
        [{"key": key(r["group"]), "noise_delta": r["mean_delta"], "noise_low": r["low"], "noise_high": r["high"]}
         for r in noise_rows]
    )
    return (
        main.with_columns(pl.col("group").map_elements(key, return_dtype=pl.String).alias("key"))
        .join(noise_df, on="key", how="left", maintain_order="left")
        .drop("key")
    )


def comparison_table(
    result: PairedResult, noise: PairedResult | None, by: str, segments: Sequence[int] | None = None,
    per_segment: bool = False, level: float = LEVEL,
) -> pl.DataFrame:
    """`group_table` of the pair and of the noise pair stacked, with a `comparison` column
    ("A → B", and "noise: X → Y") for charts that draw both."""
    frames = [group_table(result, by, segments, per_segment, level).with_columns(
        pl.lit(result.label).alias("comparison"), pl.lit("pair").alias("kind"))]
    if noise is not None:
        noise_segments = None if segments is None else [s for s in segments if s in noise.steps]
        frames.append(group_table(noise, by, noise_segments, per_segment, level).with_columns(
            pl.lit(f"noise: {noise.label}").alias("comparison"), pl.lit("noise").alias("kind")))
    return pl.concat(frames, how="vertical_relaxed")


# --- where did it help ------------------------------------------------------------------------------


def token_table(
    result: PairedResult, min_count: int = 100, k: int = 10, segments: Sequence[int] | None = None,
    text: "DataSetText | None" = None,
) -> pl.DataFrame:
    """Token ids with the largest mean improvement (most negative delta) and regression, among
    ids with at least `min_count` paired occurrences in `segments` (all when None).

    Columns: direction ("improved" / "regressed"), token_id, text (the token decoded, quoted so
    spaces and newlines show), n, mean_a, mean_b, mean_delta, se_iid (standard error treating
    occurrences as independent: for ranking, not a test). Only ids whose mean moved that way are
    listed, so either half may have fewer than k rows.
    """
    chosen = _chosen(result, segments)
    sums = TokenSums.merged([result.tokens[s] for s in chosen if s in result.tokens])
    ids = np.flatnonzero(sums.n >= max(min_count, 2))
    n = sums.n[ids]
    mean = sums.d[ids] / n
    var = np.maximum(sums.dd[ids] - n * mean * mean, 0.0) / (n - 1)
    frame = pl.DataFrame({
        "token_id": ids.astype(np.int64), "n": n.astype(np.int64), "mean_a": sums.loss_a[ids] / n,
        "mean_delta": mean, "se_iid": np.sqrt(var / n),
    }).with_columns((pl.col("mean_a") + pl.col("mean_delta")).alias("mean_b"))
    improved = frame.filter(pl.col("mean_delta") < 0).sort("mean_delta").head(k)
    regressed = frame.filter(pl.col("mean_delta") > 0).sort("mean_delta", descending=True).head(k)
    out = pl.concat([
        improved.with_columns(pl.lit("improved").alias("direction")),
        regressed.with_columns(pl.lit("regressed").alias("direction")),
    ])
    text = text or DataSetText(None, None, vocab_texts(result.vocab))
    texts = [repr(text.decode([int(t)])) for t in out["token_id"]]
    return out.with_columns(pl.Series("text", texts, dtype=pl.String)).select(
        "direction", "token_id", "text", "n", "mean_a", "mean_b", "mean_delta", "se_iid"
    )


def vocab_texts(vocab: pl.DataFrame | None) -> list[str | None] | None:
    """Each id's text from the vocabulary, indexed by token id."""
    if vocab is None:
        return None
    texts: list[str | None] = [None] * (int(vocab["token_id"].max()) + 1)
    for token_id, text in zip(vocab["token_id"].to_list(), vocab["text"].to_list()):
        texts[token_id] = text
    return texts


@dataclass
class DataSetText:
    """Decoding for tables and contexts: the data set's tokenizer and tokens.bin when it has them
    (train.dataset), else the vocabulary's text of each id."""

    tokens: np.ndarray | None  # (n_sequences, seq_len + 1) memmap of tokens.bin
    tokenizer: object | None
    vocab_text: list[str | None] | None

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.decode([int(i) for i in ids])
        texts = self.vocab_text or []
        return "".join(texts[i] if 0 <= i < len(texts) and texts[i] is not None else f"<{i}>" for i in ids)


def dataset_text(con, result: PairedResult) -> DataSetText:
    """Open the data set's tokenizer and tokens.bin when present and still the one the runs
    trained on (same sha256); otherwise decode with the vocabulary's text."""
    fallback = DataSetText(None, None, vocab_texts(result.vocab))
    found = con.sql(
        "SELECT DISTINCT filename FROM _vocab_files WHERE regexp_extract(filename, '([^/]+)/vocab\\.parquet$', 1) = $d",
        params={"d": result.dataset or ""},
    ).fetchall()
    if not found:
        return fallback
    folder = Path(found[0][0]).parent
    try:
        from train.corpus import DataError
        from train.dataset import open_dataset

        ds = open_dataset(folder.parent.parent, folder.name)
    except (ImportError, OSError, ValueError, KeyError, DataError):  # e.g. a synthetic set: vocab only
        return fallback
    if ds.sha256 != result.dataset_sha256:  # rebuilt since: its rows are not what the runs trained
        return fallback
    try:
        tokenizer = ds.tokenizer()
    except (ImportError, OSError, ValueError, KeyError, DataError):
        tokenizer = None
    return DataSetText(tokens=ds.tokens, tokenizer=tokenizer, vocab_text=fallback.vocab_text)


def token_contexts(
    con, result: PairedResult, token_ids: Sequence[int], direction: str = "improved", per_token: int = 3,
    context_tokens: int = 12, segment: int | None = None, text: DataSetText | None = None,
) -> pl.DataFrame:
    """Occurrences of `token_ids` in one segment (default: the last paired) where B's loss fell
    the most (direction "improved") or rose the most ("regressed"), with their context decoded.

    A second, targeted pass over that segment of both runs (checked like the first). Single
    occurrences are noisy: these are examples to read, the token table is the evidence.
    Columns: token_id, step, seq, position, loss_a, loss_b, delta, context (the
    `context_tokens` tokens before the target, then the target in ⟦ ⟧).
    """
    if direction not in ("improved", "regressed"):
        raise ValueError(f"direction must be 'improved' or 'regressed', got {direction!r}")
    segment = result.segments[-1] if segment is None else segment
    columns = {"token_id": pl.Int64, "step": pl.Int64, "seq": pl.Int64, "position": pl.Int64,
               "loss_a": pl.Float64, "loss_b": pl.Float64, "delta": pl.Float64, "context": pl.String}
    wanted = np.array(sorted({int(t) for t in token_ids}), dtype=np.int64)
    if not wanted.size or per_token < 1:
        return pl.DataFrame(schema=columns)
    text = text or dataset_text(con, result)
    sign = 1.0 if direction == "improved" else -1.0  # keep the smallest sign * delta
    lookup = np.zeros(int(wanted.max()) + 2, dtype=bool)  # the last slot stays False: ids past it clip there
    lookup[wanted] = True
    found: list[tuple] = []  # (token, score, step, seq, position, loss_a, loss_b, context ids)
    a_rows = read_ahead(training_order(run_parts(con, result.run_a, [segment]), ["step", "seq", "position", "loss", "token_id"]))
    b_rows = read_ahead(training_order(run_parts(con, result.run_b, [segment]), ["step", "seq", "position", "loss"]))
    try:
        for a, b in aligned_pairs(a_rows, b_rows, result.run_a, result.run_b, result.seq_len):
            tok = a.token_id
            hit = np.flatnonzero(lookup[np.minimum(tok, len(lookup) - 1)])
            if not hit.size:
                continue
            score = sign * (b.loss[hit].astype(np.float64) - a.loss[hit])
            order = np.lexsort((score, tok[hit]))  # by token, then score
            hit, score = hit[order], score[order]
            starts = np.flatnonzero(np.r_[True, tok[hit][1:] != tok[hit][:-1]])
            rank = np.arange(len(hit)) - np.repeat(starts, np.diff(np.r_[starts, len(hit)]))
            for i, sc in zip(hit[rank < per_token], score[rank < per_token]):
                first = i - int(a.position[i])  # the sequence's first row (pieces hold whole sequences)
                found.append((int(tok[i]), float(sc), int(a.step[i]), int(a.seq[i]), int(a.position[i]),
                              float(a.loss[i]), float(b.loss[i]), tok[max(first, i - context_tokens): i + 1].copy()))
            kept, counts = [], {}
            for row in sorted(found, key=lambda r: (r[0], r[1])):  # the best per_token of each id so far
                if counts.get(row[0], 0) < per_token:
                    kept.append(row)
                    counts[row[0]] = counts.get(row[0], 0) + 1
            found = kept
    finally:
        a_rows.close()
        b_rows.close()
    rows = []
    for token, _, step, seq, position, la, lb, ids in found:
        if text.tokens is not None and seq < len(text.tokens):
            # tokens[seq, position + 1] is the target; the model saw tokens[seq, :position + 1]
            ids = np.asarray(text.tokens[seq, max(0, position + 1 - context_tokens): position + 2])
        rows.append((token, step, seq, position, la, lb, lb - la, f"{text.decode(ids[:-1])}⟦{text.decode(ids[-1:])}⟧"))
    order = {int(t): i for i, t in enumerate(token_ids)}
    rows.sort(key=lambda r: (order.get(r[0], 0), sign * r[6]))
    return pl.DataFrame(rows, schema=columns, orient="row")


# --- everything for one pair ------------------------------------------------------------------------


@dataclass
class PairReport:
    """What `compare-pair`, `plot paired` and the report show for a pair (and its noise floor)."""

    result: PairedResult
    noise: PairedResult | None
    summary: pl.DataFrame
    by_segment: pl.DataFrame
    by_position: pl.DataFrame
    by_bucket: pl.DataFrame
    by_word_start: pl.DataFrame
    tokens: pl.DataFrame
    contexts: pl.DataFrame


def parse_noise(run_a: str, noise: str | Sequence[str] | None) -> tuple[str, str] | None:
    """`--noise X` pairs A with X (another seed of A's config); `--noise X,Y` pairs X with Y."""
    if noise is None:
        return None
    names = [n.strip() for n in noise.split(",")] if isinstance(noise, str) else list(noise)
    names = [n for n in names if n]
    if len(names) == 1:
        return run_a, names[0]
    if len(names) == 2:
        return names[0], names[1]
    raise ValueError(f"--noise {noise!r}: give one run (paired with {run_a}) or two runs X,Y")


def pair_report(
    con, run_a: str, run_b: str, noise: str | Sequence[str] | None = None, segments: Sequence[int] | None = None,
    min_count: int = 100, k: int = 10, examples: int = 2, context_tokens: int = 12,
) -> PairReport:
    """Pair A with B (and the noise pair), and build every table: summary, per segment, per
    position bin, per bucket, word start, top tokens and their example contexts."""
    result = pair_runs(con, run_a, run_b)
    noise_pair = parse_noise(run_a, noise)
    noise_result = pair_runs(con, *noise_pair) if noise_pair else None
    text = dataset_text(con, result)
    tokens = token_table(result, min_count, k, segments, text)
    contexts = []
    if examples > 0:
        for direction in ("improved", "regressed"):
            ids = tokens.filter(pl.col("direction") == direction)["token_id"].to_list()
            found = token_contexts(con, result, ids, direction, examples, context_tokens, text=text)
            contexts.append(found.with_columns(pl.lit(direction).alias("direction")))
    contexts_df = pl.concat(contexts) if contexts else pl.DataFrame()
    return PairReport(
        result=result,
        noise=noise_result,
        summary=summary_table(result, noise_result, segments),
        by_segment=comparison_table(result, noise_result, "segment", segments),
        by_position=comparison_table(result, noise_result, "position_bin", segments),
        by_bucket=comparison_table(result, noise_result, "bucket", segments),
        by_word_start=comparison_table(result, noise_result, "word_start", segments),
        tokens=tokens,
        contexts=contexts_df,
    )


# --- tables to show (terminal and HTML) -----------------------------------------------------------


def _with_ci(mean, low, high) -> str | None:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return None
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return f"{mean:+.4f}"
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"


def _pair_and_noise(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Rows of the pair with the noise pair's delta of the same key beside them (comparison_table)."""
    pair = df.filter(pl.col("kind") == "pair")
    shown = pair.select(
        *keys,
        pl.col("n_tokens").alias("tokens"),
        pl.col("mean_a").round(4).alias("loss A"),
        pl.col("mean_b").round(4).alias("loss B"),
        pl.struct("mean_delta", "low", "high").map_elements(
            lambda r: _with_ci(r["mean_delta"], r["low"], r["high"]), return_dtype=pl.String).alias("Δ [95% CI]"),
    )
    noise = df.filter(pl.col("kind") == "noise")
    if noise.height:
        noise = noise.select(*keys, pl.struct("mean_delta", "low", "high").map_elements(
            lambda r: _with_ci(r["mean_delta"], r["low"], r["high"]), return_dtype=pl.String).alias("noise Δ [95% CI]"))
        shown = shown.join(noise, on=keys, how="left", maintain_order="left")
    return shown


def display_tables(report: PairReport) -> list[tuple[str, pl.DataFrame]]:
    """(title, frame of text and rounded numbers) for each table of a PairReport, in reading order:
    summary, position bins, buckets, top tokens, example contexts."""
    r = report.result
    noise = f"; noise floor {report.noise.label}" if report.noise else ""
    summary = report.summary.select(
        "group",
        pl.col("n_tokens").alias("tokens"),
        pl.col("mean_a").round(4).alias("loss A"),
        pl.col("mean_b").round(4).alias("loss B"),
        pl.struct("mean_delta", "low", "high").map_elements(
            lambda x: _with_ci(x["mean_delta"], x["low"], x["high"]), return_dtype=pl.String).alias("Δ [95% CI]"),
        *([pl.struct("noise_delta", "noise_low", "noise_high").map_elements(
            lambda x: _with_ci(x["noise_delta"], x["noise_low"], x["noise_high"]), return_dtype=pl.String)
           .alias("noise Δ [95% CI]")] if report.noise else []),
    )
    positions = _pair_and_noise(
        report.by_position.with_columns(pl.format("{}-{}", "position_start", "position_end").alias("positions")),
        ["positions"],
    )
    tables = [
        (f"{r.label}: Δ = loss {r.run_b} − loss {r.run_a} (negative: {r.run_b} lower){noise}", summary),
        ("By position (log-spaced bins)", positions),
        ("By vocabulary bucket (0 = most frequent)", _pair_and_noise(report.by_bucket, ["bucket"])),
        ("Token ids with the largest mean change (se_iid treats occurrences as independent: for ranking)",
         report.tokens.select("direction", "token_id", "text", pl.col("n").alias("tokens"),
                              pl.col("mean_a").round(4).alias("loss A"), pl.col("mean_b").round(4).alias("loss B"),
                              pl.col("mean_delta").round(4).alias("Δ"), pl.col("se_iid").round(4))),
    ]
    if report.contexts.height:
        contexts = report.contexts.select(
            "direction", "token_id", "step", "seq", "position", pl.col("delta").round(4).alias("Δ"),
            pl.col("context").str.replace_all("\n", "↵", literal=True))  # one line per example
        tables.append((f"Example contexts, segment {r.segments[-1]} (single tokens are noisy: read, don't count)",
                       contexts))
    return tables
