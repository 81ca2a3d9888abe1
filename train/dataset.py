"""Article data sets: build `HOME/data/<name>/` from a corpus, check it, and open it for training.

A data set folder (DESIGN.md) holds:

- `tokens.bin`: little-endian uint16 (uint32 when the vocabulary exceeds 65,535 ids), shape
  (n_sequences, seq_len + 1). With `windows="first"` (the study's rule, the default) row i is
  the first seq_len + 1 tokens of the i-th kept article, so position 0 is always an article's
  start; an article is kept when it has at least `min_tokens` tokens. With `windows="all"`
  every full, non-overlapping window of seq_len + 1 tokens of each kept article is a row
  (position 0 is then a window start).
- `vocab.parquet`: one row per id: token_id, text, count, rank, bucket, is_word_start (see
  `vocab_table`).
- `tokenizer/`: what decoding needs offline (`train.tokenizer.load_tokenizer`).
- `manifest.json`: how it was built (source, tokenizer, lengths, counts, sha256 of tokens.bin,
  bucket rule, creation time, format version); written last.

A build writes into a hidden temporary folder next to the target and renames it into place
only when complete, so an interrupted build never leaves a folder that looks complete.

The trainer reads through `open_dataset(home, name)`; this module imports only numpy at the
top (pyarrow, tokenizers and tiktoken lazily) so it runs on a box with torch, numpy, pyarrow.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import math
import os
import platform
import queue
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from train.corpus import Corpus, DataError, open_corpus, text_bytes
from train.tokenizer import (
    is_word_start,
    load_gpt2,
    load_tokenizer,
    parse_tokenizer_spec,
    safe_pieces,
    safe_prefix,
    token_text,
    train_bpe,
)
from train.workspace import data_dir, resolve_home

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENS = "tokens.bin"
VOCAB = "vocab.parquet"
TOKENIZER_DIR = "tokenizer"

DEFAULT_SOURCE = "stdlib"
DEFAULT_TOKENIZER = "bpe:4096"
DEFAULT_SEQ_LEN = 1024
DEFAULT_TOKENS = 1_000_000
DEFAULT_N_BUCKETS = 25  # bucket_tokens defaults to tokens / 25
DEFAULT_BPE_SAMPLE_CHARS = 8_000_000  # ~1.7 s of BPE training on 2 cores for bpe:4096
WINDOW_RULES = ("first", "all")
ID_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
VOCAB_COLUMNS = ("token_id", "text", "count", "rank", "bucket", "is_word_start")

BUCKET_RULE = ("ids sorted by count descending (ties: smaller token_id first); running total of counts; "
               "a token whose addition makes the running total cross (reach or pass) a multiple of "
               "bucket_tokens is the last of its bucket and the next token starts a new one; buckets "
               "are numbered 0, 1, 2, ... from the most frequent; ids with count 0 get their own bucket, "
               "numbered one past the last counted bucket (unseen_bucket)")
WINDOW_RULE_TEXT = {
    "first": "each kept article gives its first seq_len+1 tokens: position 0 is an article start",
    "all": "each kept article gives every full, non-overlapping seq_len+1 window: position 0 is a window start",
}
VOCAB_COLUMN_DOCS = {
    "token_id": "the id (one row per id, 0..vocab_size-1)",
    "text": "the token's bytes as UTF-8 text; bytes that are not whole characters written \\xNN",
    "count": "occurrences as a target, i.e. at positions 1..seq_len of tokens.bin",
    "rank": "0 = most frequent, by count descending then token_id (as lossdb.synthetic)",
    "bucket": "frequency bucket (see bucket_rule); 0 holds the most frequent ids",
    "is_word_start": "the text begins with whitespace (GPT-2's Ġ)",
}


# --- reading side (what the trainer uses) -------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """An opened data set. `tokens` is a read-only memmap (n_sequences, seq_len + 1)."""

    path: Path
    manifest: dict
    tokens: np.memmap

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def n_sequences(self) -> int:
        return int(self.manifest["n_sequences"])

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    def vocab(self):
        """vocab.parquet as a pyarrow Table."""
        import pyarrow.parquet as pq

        return pq.read_table(self.path / VOCAB)

    def tokenizer(self):
        """The data set's tokenizer, loaded offline from its `tokenizer/` folder."""
        return load_tokenizer(self.path / TOKENIZER_DIR)


def open_dataset(home: str | os.PathLike | None, name: str) -> Dataset:
    """Open `HOME/data/<name>/`; a clear DataError if it is missing or incomplete."""
    home = resolve_home(home)
    path = data_dir(home, name)
    if not path.is_dir():
        have = ", ".join(list_datasets(home)) or "none"
        raise DataError(f"data set {name!r} not found in {path.parent} (have: {have}); "
                        f"build it with `python cli.py data build --name {name}`")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"data set {name!r} at {path} is incomplete (no {MANIFEST}); rebuild it with --force")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{manifest_path}: format_version {manifest.get('format_version')!r}, "
                        f"this code reads {FORMAT_VERSION}; rebuild it with --force")
    dtype = ID_DTYPES[manifest["dtype"]]
    shape = (int(manifest["n_sequences"]), int(manifest["seq_len"]) + 1)
    tokens_path = path / TOKENS
    expected = shape[0] * shape[1] * dtype.itemsize
    actual = tokens_path.stat().st_size if tokens_path.is_file() else None
    if actual != expected:
        raise DataError(f"{tokens_path}: {actual if actual is not None else 'missing'} bytes, the manifest's "
                        f"shape {list(shape)} of {manifest['dtype']} needs {expected}; rebuild it with --force")
    tokens = np.memmap(tokens_path, dtype=dtype, mode="r", shape=shape)
    return Dataset(path=path, manifest=manifest, tokens=tokens)


def list_datasets(home: str | os.PathLike | None) -> list[str]:
    """Names of the complete data sets in HOME/data (hidden build folders left out)."""
    root = resolve_home(home) / "data"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file())


# --- small pure pieces --------------------------------------------------------------------------


def choose_id_dtype(vocab_size: int, requested: str = "auto") -> str:
    """"uint16" or "uint32" for token ids; DataError when the vocabulary does not fit."""
    if requested == "auto":
        requested = "uint16" if vocab_size <= 65_535 else "uint32"
    if requested not in ID_DTYPES:
        raise DataError(f"--dtype {requested!r}: expected auto, uint16 or uint32")
    largest_id = int(np.iinfo(ID_DTYPES[requested]).max)
    if vocab_size - 1 > largest_id:
        hint = "use --dtype uint32" if requested == "uint16" else "uint32 is the largest id type"
        raise DataError(f"vocabulary of {vocab_size:,} ids does not fit {requested} (ids up to {largest_id:,}); {hint}")
    return requested


def rank_and_bucket(counts: np.ndarray, bucket_tokens: int) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Per id: frequency rank (0 = most frequent) and bucket (see BUCKET_RULE), and the unseen bucket.

    counts: (V,) int. Returns rank (V,), bucket (V,), and the bucket of the zero-count ids (None
    when every id occurs).
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.shape[0]
    order = np.lexsort((np.arange(n), -counts))  # count descending, then token_id ascending
    sorted_counts = counts[order]
    total_after = np.cumsum(sorted_counts)
    total_before = total_after - sorted_counts
    crossed = total_after // bucket_tokens > total_before // bucket_tokens
    bucket_sorted = np.concatenate(([0], np.cumsum(crossed)[:-1])).astype(np.int64)
    seen = sorted_counts > 0
    unseen_bucket = None
    if not seen.all():
        unseen_bucket = int(bucket_sorted[seen].max()) + 1 if seen.any() else 0
        bucket_sorted[~seen] = unseen_bucket
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    bucket = np.empty(n, dtype=np.int64)
    bucket[order] = bucket_sorted
    return rank, bucket, unseen_bucket


def vocab_table(token_bytes: Sequence[bytes], counts: np.ndarray, bucket_tokens: int):
    """The vocab.parquet table: one row per id (columns VOCAB_COLUMNS)."""
    import pyarrow as pa

    rank, bucket, _ = rank_and_bucket(counts, bucket_tokens)
    texts = [token_text(b) for b in token_bytes]
    return pa.table({
        "token_id": pa.array(np.arange(len(texts), dtype=np.int32)),
        "text": pa.array(texts, pa.string()),
        "count": pa.array(np.asarray(counts, dtype=np.int64)),
        "rank": pa.array(rank.astype(np.int32)),
        "bucket": pa.array(bucket.astype(np.int32)),
        "is_word_start": pa.array([is_word_start(t) for t in texts], pa.bool_()),
    })


def target_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Occurrences of each id at positions 1..seq_len (the training targets): (V,) int64."""
    return np.bincount(np.asarray(tokens[:, 1:]).ravel(), minlength=vocab_size).astype(np.int64)


# --- building -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    """The checked, resolved build options."""

    seq_len: int
    min_tokens: int
    tokens: int
    bucket_tokens: int
    windows: str

    @property
    def width(self) -> int:
        return self.seq_len + 1

    @property
    def n_sequences(self) -> int:
        """Rows needed to reach `tokens` (the last row may pass it)."""
        return math.ceil(self.tokens / self.width)


def check_options(seq_len: int, min_tokens: int | None, tokens: int, bucket_tokens: int | None,
                  windows: str) -> BuildOptions:
    if seq_len < 1:
        raise DataError(f"--seq-len {seq_len}: must be at least 1")
    min_tokens = seq_len + 1 if min_tokens is None else min_tokens
    if seq_len + 1 > min_tokens:
        raise DataError(f"--min-tokens {min_tokens:,} is less than seq_len+1 = {seq_len + 1:,}: "
                        "a kept article must fill a whole sequence")
    if tokens < 1:
        raise DataError(f"--tokens {tokens}: must be at least 1")
    bucket_tokens = max(1, tokens // DEFAULT_N_BUCKETS) if bucket_tokens is None else bucket_tokens
    if bucket_tokens < 1:
        raise DataError(f"--bucket-tokens {bucket_tokens}: must be at least 1")
    if windows not in WINDOW_RULES:
        raise DataError(f"--windows {windows!r}: expected one of {', '.join(WINDOW_RULES)}")
    return BuildOptions(seq_len, min_tokens, tokens, bucket_tokens, windows)


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise DataError(f"data set name {name!r}: use letters, digits, '.', '_' and '-', "
                        "starting with a letter or digit")
    return name


def build_dataset(
    home: str | os.PathLike | None,
    name: str,
    source: str | Sequence[str] | Corpus = DEFAULT_SOURCE,
    tokenizer: str = DEFAULT_TOKENIZER,
    seq_len: int = DEFAULT_SEQ_LEN,
    min_tokens: int | None = None,
    tokens: int = DEFAULT_TOKENS,
    bucket_tokens: int | None = None,
    windows: str = "first",
    force: bool = False,
    allow_short: bool = False,
    text_field: str = "text",
    progress: bool = True,
    dtype: str = "auto",
    bpe_sample_chars: int = DEFAULT_BPE_SAMPLE_CHARS,
) -> Path:
    """Build `HOME/data/<name>/` and return its path. Every bad input raises a one-line DataError.

    Articles are read in source order until `tokens` tokens (n_sequences * (seq_len+1), the last
    row may pass it) are collected. `min_tokens` defaults to seq_len+1 and `bucket_tokens` to
    tokens/25. `bpe:N` is trained on the first `bpe_sample_chars` characters of the source.
    """
    started = time.perf_counter()
    # Check everything cheap before any slow work, so a typo fails in milliseconds.
    check_name(name)
    opts = check_options(seq_len, min_tokens, tokens, bucket_tokens, windows)
    if bpe_sample_chars < 1:
        raise DataError(f"--bpe-sample {bpe_sample_chars}: must be at least 1")
    if dtype != "auto":
        choose_id_dtype(1, dtype)  # a bad --dtype name fails here; the fit is checked once the vocab is known
    home = resolve_home(home)
    final = data_dir(home, name)
    if final.exists() and not force:
        raise DataError(f"data set {name!r} already exists at {final}; pass --force to rebuild it")
    corpus = open_corpus(source, text_field)
    kind, bpe_size = parse_tokenizer_spec(tokenizer)
    tok = load_gpt2() if kind == "gpt2" else None

    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(final)
    tmp = final.parent / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        docs = iter(corpus)
        if tok is None:
            docs, tok, tokenizer_info = _train_bpe_on_source(docs, corpus.spec, bpe_size, bpe_sample_chars, progress)
        else:
            tokenizer_info = {"library": "tiktoken", "library_version": _version("tiktoken"), "encoding": "gpt2"}
        id_dtype = choose_id_dtype(tok.vocab_size, dtype)

        tokenize_started = time.perf_counter()
        written = write_tokens(tmp / TOKENS, docs, tok, opts, ID_DTYPES[id_dtype], progress)
        tokenize_seconds = time.perf_counter() - tokenize_started
        _check_enough(written, corpus.spec, opts, allow_short)

        tok.save(tmp / TOKENIZER_DIR)
        import pyarrow.parquet as pq

        pq.write_table(vocab_table(tok.token_bytes(), written.counts, opts.bucket_tokens), tmp / VOCAB)
        manifest = _manifest(name, corpus, text_field, tokenizer, tokenizer_info | {"vocab_size": tok.vocab_size},
                             id_dtype, opts, written)
        manifest["build"] = {
            "seconds": round(time.perf_counter() - started, 3),
            "tokenize_seconds": round(tokenize_seconds, 3),
            "tokens_per_second": round(manifest["n_tokens"] / max(tokenize_seconds, 1e-9)),
            "tokens_tokenized": written.tokens_encoded,  # windows="first" tokenizes only article prefixes
            "python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform(),
        }
        # The manifest is written last: a folder without one is never taken for a data set.
        _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _publish(tmp, final, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(progress, f"built {final}: {written.n_sequences:,} sequences of {opts.width} tokens "
                   f"in {time.perf_counter() - started:.1f} s")
    return final


def _train_bpe_on_source(docs: Iterator[str], spec: str, vocab_size: int, sample_chars: int,
                         progress: bool) -> tuple[Iterator[str], object, dict]:
    """Train bpe:N on the source's first `sample_chars` characters; returns (all documents
    again, the tokenizer, what the manifest records about it)."""
    docs, sample, sample_docs = _bpe_sample(docs, sample_chars)
    if not sample:
        raise DataError(f"source {spec!r} is empty: it yielded no text")
    n_chars = sum(map(len, sample))
    _say(progress, f"training bpe:{vocab_size} on the first {n_chars:,} characters "
                   f"({sample_docs:,} documents) of {spec}")
    tok = train_bpe(sample, vocab_size)
    info = {"library": "tokenizers", "library_version": _version("tokenizers"),
            "pre_tokenizer": "ByteLevel(add_prefix_space=False), GPT-2 split regex",
            "trained_on": {"characters": n_chars, "documents": sample_docs,
                           "rule": f"the first {sample_chars:,} characters of the source in source order "
                                   "(the last document cut there)"}}
    return docs, tok, info


def _manifest(name: str, corpus: Corpus, text_field: str, tokenizer: str, tokenizer_info: dict, id_dtype: str,
              opts: BuildOptions, written: Written) -> dict:
    _, buckets, unseen_bucket = rank_and_bucket(written.counts, opts.bucket_tokens)
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": corpus.spec,
        "source_info": corpus.describe(),
        "text_field": text_field,
        "tokenizer": tokenizer,
        "tokenizer_info": tokenizer_info,
        "vocab_size": tokenizer_info["vocab_size"],
        "dtype": id_dtype,
        "byte_order": "little",
        "seq_len": opts.seq_len,
        "min_tokens": opts.min_tokens,
        "windows": opts.windows,
        "window_rule": WINDOW_RULE_TEXT[opts.windows],
        "tokens_requested": opts.tokens,
        "short": written.n_sequences < opts.n_sequences,
        "n_sequences": written.n_sequences,
        "n_tokens": written.n_sequences * opts.width,
        "n_target_tokens": written.n_sequences * opts.seq_len,
        "shape": [written.n_sequences, opts.width],
        "sha256": written.sha256,
        "articles": {"read": written.articles_read, "kept": written.articles_kept,
                     "too_short": written.articles_short, "empty": written.articles_empty},
        "bucket_tokens": opts.bucket_tokens,
        "bucket_rule": BUCKET_RULE,
        "n_buckets": int(buckets[written.counts > 0].max()) + 1,  # buckets holding counted ids
        "unseen_bucket": unseen_bucket,
        "vocab_columns": VOCAB_COLUMN_DOCS,
    }


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _bpe_sample(docs: Iterator[str], max_chars: int) -> tuple[Iterator[str], list[str], int]:
    """Take the BPE training sample off the front of the source without losing those documents.

    Returns (all documents again, the sample texts with the last one cut at max_chars, the
    number of documents the sample touches).
    """
    head: list[str] = []
    sample: list[str] = []
    total = 0
    for text in docs:
        head.append(text)
        if text:
            sample.append(text[: max_chars - total])
            total += len(sample[-1])
        if total >= max_chars:
            break
    return itertools.chain(head, docs), sample, len(head)


def _remove_stale_builds(final: Path) -> None:
    """Delete temporary folders of earlier builds of this name whose process is gone (killed)."""
    for leftover in final.parent.glob(f".{final.name}.tmp-*"):
        pid = leftover.name[len(f".{final.name}.tmp-"):].split("-")[0]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
    for leftover in final.parent.glob(f".{final.name}.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(tmp: Path, final: Path, force: bool) -> None:
    """Rename the finished folder into place (replacing the old one with --force)."""
    old = None
    if final.exists():
        if not force:
            raise DataError(f"data set {final.name!r} appeared at {final} during the build; pass --force to replace it")
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError as err:
        raise DataError(f"cannot move the finished build to {final}: {err}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- the tokenizing pipeline --------------------------------------------------------------------


@dataclass
class Written:
    """What `write_tokens` produced."""

    n_sequences: int = 0
    sha256: str = ""
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    articles_read: int = 0
    articles_kept: int = 0
    articles_short: int = 0
    articles_empty: int = 0
    tokens_encoded: int = 0  # tokens the tokenizer produced, including prefixes tokenized twice


def _check_enough(written: Written, spec: str, opts: BuildOptions, allow_short: bool) -> None:
    if written.articles_read == written.articles_empty:
        raise DataError(f"source {spec!r} is empty: it yielded no text")
    if written.n_sequences == opts.n_sequences:
        return
    found = (f"{written.n_sequences:,} sequences ({written.n_sequences * opts.width:,} tokens) from "
             f"{written.articles_kept:,} of {written.articles_read:,} articles with at least "
             f"{opts.min_tokens:,} tokens")
    if written.n_sequences == 0:
        raise DataError(f"source {spec!r} has no article with at least {opts.min_tokens:,} tokens "
                        f"({written.articles_read:,} read); lower --min-tokens/--seq-len or use a larger source")
    if not allow_short:
        raise DataError(f"source {spec!r} has only {found}, fewer than the {opts.tokens:,} tokens asked for; "
                        "pass --allow-short to build with what there is, or lower --tokens")


def write_tokens(path: Path, docs: Iterable[str], tok, opts: BuildOptions, dtype: np.dtype,
                 progress: bool) -> Written:
    """Tokenize articles in source order and write rows to `path` until opts.n_sequences rows.

    Reading runs ahead in a background thread; tokenizing runs in the tokenizer's own thread
    pool (both tokenizers release the GIL), so the three stages overlap.
    """
    from tqdm import tqdm

    written = Written(counts=np.zeros(tok.vocab_size, np.int64))
    sha = hashlib.sha256()
    bar = tqdm(total=opts.n_sequences * opts.width, unit="tok", unit_scale=True, disable=not progress,
               desc=f"tokenizing ({tok.spec})", file=sys.stderr, smoothing=0.05, dynamic_ncols=True)
    pending: list[np.ndarray] = []  # rows not yet written, each (k, width) int64
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if not pending:
            return
        block = np.concatenate(pending)  # (rows, width) int64
        if int(block.max()) >= tok.vocab_size:
            raise DataError(f"tokenizer {tok.spec} produced id {int(block.max())} >= its vocab_size {tok.vocab_size}")
        written.counts += np.bincount(block[:, 1:].ravel(), minlength=tok.vocab_size)
        data = block.astype(dtype).tobytes()
        sha.update(data)
        out.write(data)
        pending, pending_rows = [], 0

    chars_read = 0  # characters of the articles handled so far

    def slice_end(batch: list[str], start: int) -> int:
        """End of the next slice of `batch` to tokenize: about what should finish the build (with
        a margin), so that near the end little is tokenized in vain."""
        if written.n_sequences == 0:
            return start + 16
        remaining = opts.n_sequences - written.n_sequences
        if opts.windows == "first":  # one row per kept article
            return start + int(remaining * written.articles_read / written.n_sequences * 1.25) + 4
        chars_needed = remaining * chars_read / written.n_sequences * 1.1 + PIECE_CHARS  # rows grow with length
        end, chars = start, 0
        while end < len(batch) and chars < chars_needed:
            chars += len(batch[end])
            end += 1
        return end

    encoder = _ArticleEncoder(tok, opts)
    with open(path, "wb") as out, bar:
        for batch in _prefetched(_batches(docs, opts.windows)):
            start = 0
            while start < len(batch) and written.n_sequences < opts.n_sequences:
                texts = batch[start : slice_end(batch, start)]
                start += len(texts)
                chars_read += sum(map(len, texts))
                for article_ids in encoder.encode(texts):
                    written.articles_read += 1
                    if article_ids is None or len(article_ids) < opts.min_tokens:
                        written.articles_short += 1
                        written.articles_empty += article_ids is not None and len(article_ids) == 0
                        continue
                    rows = _rows_of(article_ids, opts)[: opts.n_sequences - written.n_sequences]
                    written.articles_kept += 1
                    written.n_sequences += len(rows)
                    pending.append(rows)
                    pending_rows += len(rows)
                    bar.update(len(rows) * opts.width)
                    if written.n_sequences == opts.n_sequences:
                        break
                if pending_rows * opts.width >= 1 << 20:
                    flush()
                    bar.set_postfix(kept=written.articles_kept, short=written.articles_short, refresh=False)
            if written.n_sequences == opts.n_sequences:
                break
        flush()
        out.flush()
        os.fsync(out.fileno())  # on disk before the folder is renamed into place
        bar.set_postfix(kept=written.articles_kept, short=written.articles_short)
    written.sha256 = sha.hexdigest()
    written.tokens_encoded = encoder.tokens
    return written


def _rows_of(ids: list[int], opts: BuildOptions) -> np.ndarray:
    """An article's rows: (1, width) with windows="first", (len // width, width) with "all"."""
    if opts.windows == "first":
        return np.asarray(ids[: opts.width], dtype=np.int64)[None, :]
    n_windows = len(ids) // opts.width
    return np.asarray(ids[: n_windows * opts.width], dtype=np.int64).reshape(n_windows, opts.width)


PIECE_CHARS = 32_768  # long articles are tokenized in pieces of about this size, in parallel


class _ArticleEncoder:
    """Tokenizes batches of articles in parallel, cutting texts at safe points (`safe_prefix`).

    windows="first": an article needs min_tokens tokens to be kept and only its first seq_len+1
    are written, so instead of the whole text we tokenize a prefix (`safe_prefix`), sized from
    the characters per token seen so far; the few prefixes that come out too short are
    tokenized again with twice the characters.
    windows="all": every token is needed; long articles are cut at safe points into pieces that
    are tokenized in parallel with the rest of the batch and joined again, so one huge article
    does not keep a single core busy while the other waits.
    """

    def __init__(self, tok, opts: BuildOptions):
        self.tok = tok
        self.opts = opts
        self.chars = 0  # characters and tokens tokenized so far
        self.tokens = 0

    def encode(self, texts: list[str]) -> list[list[int] | None]:
        """Token ids per article (only a prefix with windows="first"); None for an article that is
        certainly too short (fewer UTF-8 bytes than min_tokens: every token is at least a byte)."""
        min_tokens = self.opts.min_tokens
        result: list[list[int] | None] = [[] if not text else None for text in texts]
        todo = [i for i, text in enumerate(texts) if text and text_bytes(text) >= min_tokens]
        if self.opts.windows == "all":
            owners, pieces = [], []
            for i in todo:
                for piece in safe_pieces(texts[i], PIECE_CHARS):
                    owners.append(i)
                    pieces.append(piece)
                result[i] = []
            for i, ids in zip(owners, self._encode(pieces)):
                result[i].extend(ids)
            return result
        chars_per_token = self.chars / self.tokens if self.tokens else 4.0
        want = {i: int(min_tokens * chars_per_token * 1.2) + 16 for i in todo}
        while todo:
            prefixes = [safe_prefix(texts[i], want[i]) for i in todo]
            retry = []
            for i, prefix, ids in zip(todo, prefixes, self._encode(prefixes)):
                if len(ids) < min_tokens and len(prefix) < len(texts[i]):
                    want[i] *= 2  # too few tokens in this prefix, but the article goes on
                    retry.append(i)
                else:
                    result[i] = ids
            todo = retry
        return result

    def _encode(self, texts: list[str]) -> list[list[int]]:
        ids = self.tok.encode_batch(texts) if texts else []
        self.chars += sum(map(len, texts))
        self.tokens += sum(map(len, ids))
        return ids


def _batches(docs: Iterable[str], windows: str) -> Iterator[list[str]]:
    """Documents in groups: up to 256, fewer when long and tokenized whole (windows="all")."""
    max_docs, max_chars = 256, (1 << 62 if windows == "first" else 4_000_000)
    batch: list[str] = []
    chars = 0
    for text in docs:
        batch.append(text)
        chars += len(text)
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


_DONE = object()


def _prefetched(items: Iterator, depth: int = 2) -> Iterator:
    """`items`, read ahead by a background thread; its exceptions re-raise here, in order."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as err:  # handed to the consumer, which re-raises it
            put((_DONE, err))

    reader = threading.Thread(target=read, daemon=True, name="corpus-reader")
    reader.start()
    try:
        while True:
            item, err = buffer.get()
            if err is not None:
                raise err
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()


# --- verify and info ----------------------------------------------------------------------------


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_dataset(home: str | os.PathLike | None, name: str) -> list[str]:
    """Re-check a data set; returns the problems found (empty when it is sound).

    Checks the sha256 of tokens.bin, that ids are below vocab_size, that vocab.parquet has the
    columns and one row per id with counts recounted from tokens.bin and ranks/buckets
    recomputed by the bucket rule, and that the tokenizer loads with the same vocabulary size.
    """
    import pyarrow.parquet as pq

    ds = open_dataset(home, name)  # shape and size are checked here
    problems = []
    actual = file_sha256(ds.path / TOKENS)
    if actual != ds.sha256:
        problems.append(f"{ds.path / TOKENS}: sha256 {actual} differs from the manifest's {ds.sha256}")
    largest = int(ds.tokens.max()) if ds.tokens.size else 0
    if largest >= ds.vocab_size:
        problems.append(f"{ds.path / TOKENS}: id {largest} >= vocab_size {ds.vocab_size}")
        return problems
    vocab_path = ds.path / VOCAB
    if not vocab_path.is_file():
        return problems + [f"{vocab_path}: missing"]
    vocab = pq.read_table(vocab_path)
    if tuple(vocab.column_names) != VOCAB_COLUMNS:
        return problems + [f"{vocab_path}: columns {vocab.column_names}, expected {list(VOCAB_COLUMNS)}"]
    if vocab.num_rows != ds.vocab_size:
        return problems + [f"{vocab_path}: {vocab.num_rows} rows, expected one per id ({ds.vocab_size})"]
    if not np.array_equal(vocab["token_id"].to_numpy(), np.arange(ds.vocab_size)):
        problems.append(f"{vocab_path}: token_id is not 0..{ds.vocab_size - 1} in order")
    counts = target_counts(ds.tokens, ds.vocab_size)
    if not np.array_equal(vocab["count"].to_numpy(), counts):
        problems.append(f"{vocab_path}: count differs from the target counts recounted from {TOKENS}")
    rank, bucket, _ = rank_and_bucket(counts, int(ds.manifest["bucket_tokens"]))
    if not np.array_equal(vocab["rank"].to_numpy(), rank):
        problems.append(f"{vocab_path}: rank differs from the recomputed ranks")
    if not np.array_equal(vocab["bucket"].to_numpy(), bucket):
        problems.append(f"{vocab_path}: bucket differs from the bucket rule with "
                        f"bucket_tokens={ds.manifest['bucket_tokens']}")
    try:
        tok = ds.tokenizer()
    except Exception as err:  # any failure to load is a problem to report, not a crash
        problems.append(f"{ds.path / TOKENIZER_DIR}: cannot load the tokenizer ({type(err).__name__}: {err})")
    else:
        if tok.vocab_size != ds.vocab_size:
            problems.append(f"{ds.path / TOKENIZER_DIR}: {tok.vocab_size} ids, the manifest says {ds.vocab_size}")
    return problems


def bucket_summary(vocab) -> list[dict]:
    """Per bucket: ids, target count, share of all targets, and the most frequent tokens."""
    bucket = vocab["bucket"].to_numpy()
    count = vocab["count"].to_numpy()
    rank = vocab["rank"].to_numpy()
    texts = vocab["text"].to_pylist()
    total = max(int(count.sum()), 1)
    rows, cumulative = [], 0
    for b in np.unique(bucket):
        members = np.flatnonzero(bucket == b)
        members = members[np.argsort(rank[members])]
        bucket_count = int(count[members].sum())
        cumulative += bucket_count
        rows.append({"bucket": int(b), "ids": len(members), "count": bucket_count,
                     "share": bucket_count / total, "cumulative": cumulative / total,
                     "top": [texts[i] for i in members[:4]]})
    return rows


def dataset_info(home: str | os.PathLike | None, name: str, n_examples: int = 3, example_tokens: int = 32) -> str:
    """A readable summary: the manifest, a bucket table and the first tokens of a few sequences."""
    ds = open_dataset(home, name)
    m = ds.manifest
    lines = [f"data set {name} at {ds.path}"]
    for key in ("source", "tokenizer", "vocab_size", "dtype", "seq_len", "min_tokens", "windows",
                "tokens_requested", "n_sequences", "n_tokens", "short", "sha256", "bucket_tokens",
                "n_buckets", "unseen_bucket", "created"):
        lines.append(f"  {key:<17} {m.get(key)}")
    a = m["articles"]
    lines.append(f"  {'articles':<17} read {a['read']:,}, kept {a['kept']:,}, too short {a['too_short']:,} "
                 f"(of which empty {a['empty']:,})")
    lines.append(f"  {'window rule':<17} {m['window_rule']}")
    if m["source_info"].get("python_version"):
        lines.append(f"  {'python':<17} {m['source_info']['python_version']}")
    lines.append("")
    lines.append(f"{'bucket':>6} {'ids':>7} {'count':>12} {'share':>7} {'cum.':>7}  most frequent")
    for row in bucket_summary(ds.vocab()):
        top = " ".join(repr(t) for t in row["top"])
        lines.append(f"{row['bucket']:>6} {row['ids']:>7,} {row['count']:>12,} {row['share']:>6.1%} "
                     f"{row['cumulative']:>6.1%}  {top}")
    lines.append("")
    tok = ds.tokenizer()
    for i in range(min(n_examples, ds.n_sequences)):
        lines.append(f"sequence {i}: {tok.decode(ds.tokens[i, :example_tokens])!r}")
    return "\n".join(lines)
