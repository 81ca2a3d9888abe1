"""Building, opening and verifying article data sets, checked against slow obvious references."""

from __future__ import annotations

import json
import platform
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from train.corpus import DataError, open_corpus
from train.dataset import (
    VOCAB_COLUMNS,
    build_dataset,
    choose_id_dtype,
    list_datasets,
    open_dataset,
    rank_and_bucket,
    verify_dataset,
)
from train.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHORT_MARK = "zqxshort"  # only the too-short articles contain it
# Unicode's White_Space characters, written out.
WHITE_SPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000")
WHITE_SPACE |= {chr(c) for c in range(0x2000, 0x200B)}


def write_corpus(path: Path, n_docs: int = 60, seed: int = 0) -> list[str]:
    """A .jsonl of English-like articles; every third is a few words long and carries SHORT_MARK."""
    rng = random.Random(seed)
    words = ["the", "cat", "isn't", "they'll", "run", "42", "naïve", "café", "(x)", "def", "return",
             "\n", "\n\n", "  ", "x_y", "I'm", "sat", "on", "mat", "and", "then", "slept"]
    docs = []
    for i in range(n_docs):
        if i % 3 == 1:
            docs.append(f"{SHORT_MARK} {rng.choice(words)}")
        else:
            docs.append(" ".join(rng.choice(words) for _ in range(rng.randint(20, 200))))
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return docs


def reference_rows(texts: list[str], tok, seq_len: int, min_tokens: int, windows: str) -> list[list[int]]:
    """The rows a build should hold, tokenizing each whole article on its own, one at a time."""
    width = seq_len + 1
    rows = []
    for text in texts:
        ids = tok.encode_batch([text])[0]
        if len(ids) < min_tokens:
            continue
        if windows == "first":
            rows.append(ids[:width])
        else:
            rows.extend(ids[k * width : (k + 1) * width] for k in range(len(ids) // width))
    return rows


def small_build(home: Path, corpus: Path, name: str = "small", **options) -> Path:
    options = {"tokenizer": "bpe:300", "seq_len": 16, "tokens": 20 * 17, "progress": False} | options
    return build_dataset(home, name, source=str(corpus), **options)


@pytest.fixture(autouse=True)
def hf_cache_in_tmp(tmp_path, monkeypatch):
    """Keep the lock files `datasets` writes while streaming out of ~/.cache."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    write_corpus(path)
    return path


# --- the filter and the window rules --------------------------------------------------------------


@pytest.mark.parametrize("windows, min_tokens", [("first", None), ("first", 40), ("all", None)])
def test_rows_match_whole_text_tokenization(tmp_path, corpus, windows, min_tokens):
    path = small_build(tmp_path / "home", corpus, windows=windows, min_tokens=min_tokens)
    ds = open_dataset(tmp_path / "home", "small")
    tok = ds.tokenizer()
    texts = list(open_corpus(str(corpus)))
    expected = reference_rows(texts, tok, 16, min_tokens or 17, windows)[:20]
    assert len(expected) == 20  # the corpus has more than asked, so the build stops at 20 rows
    assert ds.tokens.tolist() == expected
    assert ds.manifest["windows"] == windows and (path / "manifest.json").is_file()


def test_no_sequence_comes_from_a_too_short_article_and_each_starts_one(tmp_path, corpus):
    small_build(tmp_path, corpus)
    ds = open_dataset(tmp_path, "small")
    tok = ds.tokenizer()
    texts = [t for t in open_corpus(str(corpus))]
    long_texts = [t for t in texts if SHORT_MARK not in t]
    for row, text in zip(ds.tokens, long_texts):  # kept articles in source order, one row each
        decoded = tok.decode(row)
        assert SHORT_MARK not in decoded
        assert text.startswith(decoded)  # position 0 is the article's first token
    m = ds.manifest
    assert m["articles"]["kept"] == 20 and m["articles"]["too_short"] == m["articles"]["read"] - 20 > 0


def test_min_tokens_below_seq_len_plus_one_is_refused(tmp_path, corpus):
    with pytest.raises(DataError, match=r"--min-tokens 10 is less than seq_len\+1 = 17"):
        small_build(tmp_path, corpus, min_tokens=10)
    assert not (tmp_path / "data").exists()


# --- vocab.parquet and buckets --------------------------------------------------------------------


def test_bucket_rule_hand_computed_example():
    # ids:          0  1   2   3   4  5  6      bucket_tokens = 20
    counts = np.array([5, 0, 30, 10, 10, 7, 3])
    # Sorted by count desc, ties by id: 2(30) 3(10) 4(10) 5(7) 0(5) 6(3) 1(0); running totals
    # 30 40 50 57 62 65. Crossing 20 at id 2 and 40 at id 3 closes buckets 0 and 1; 60 is crossed
    # at id 0, which closes bucket 2 = {4, 5, 0}; id 6 starts bucket 3; id 1 (count 0) gets bucket 4.
    rank, bucket, unseen = rank_and_bucket(counts, 20)
    assert rank.tolist() == [4, 6, 0, 1, 2, 3, 5]
    assert bucket.tolist() == [2, 4, 0, 1, 2, 2, 3]
    assert unseen == 4


def slow_rank_and_bucket(counts: list[int], bucket_tokens: int):
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    rank, bucket, current, total = {}, {}, 0, 0
    for r, i in enumerate(order):
        rank[i] = r
        if counts[i] == 0:
            continue
        bucket[i] = current
        before, total = total, total + counts[i]
        if total // bucket_tokens > before // bucket_tokens:
            current += 1
    unseen = max(bucket.values(), default=-1) + 1
    return [rank[i] for i in range(len(counts))], [bucket.get(i, unseen) for i in range(len(counts))]


@pytest.mark.parametrize("seed", range(5))
def test_bucket_rule_matches_a_slow_loop(seed):
    rng = np.random.default_rng(seed)
    counts = (rng.zipf(1.5, size=200) * (rng.random(200) < 0.8)).clip(max=10_000)
    bucket_tokens = int(rng.integers(1, counts.sum() // 3))
    rank, bucket, _ = rank_and_bucket(counts, bucket_tokens)
    slow_rank, slow_bucket = slow_rank_and_bucket(counts.tolist(), bucket_tokens)
    assert rank.tolist() == slow_rank and bucket.tolist() == slow_bucket


def test_vocab_parquet_counts_targets_and_marks_word_starts(tmp_path, corpus):
    small_build(tmp_path, corpus, bucket_tokens=25)
    ds = open_dataset(tmp_path, "small")
    vocab = pq.read_table(ds.path / "vocab.parquet")
    assert tuple(vocab.column_names) == VOCAB_COLUMNS and vocab.num_rows == ds.vocab_size == 300
    counts = [0] * ds.vocab_size
    for row in ds.tokens.tolist():
        for token in row[1:]:  # targets: positions 1..seq_len, never position 0
            counts[token] += 1
    assert vocab["count"].to_pylist() == counts
    slow_rank, slow_bucket = slow_rank_and_bucket(counts, 25)
    assert vocab["rank"].to_pylist() == slow_rank and vocab["bucket"].to_pylist() == slow_bucket
    tok = ds.tokenizer()
    for token_id, text, word_start in zip(*(vocab[c].to_pylist() for c in ("token_id", "text", "is_word_start"))):
        raw = tok.token_bytes()[token_id]
        assert word_start == (raw.decode("utf-8", "backslashreplace")[:1] in WHITE_SPACE)
        if raw.isascii():
            assert text == raw.decode()
    m = ds.manifest
    assert m["n_buckets"] == max(b for b, c in zip(slow_bucket, counts) if c) + 1


# --- determinism, atomicity, rebuilding --------------------------------------------------------


def test_same_inputs_give_byte_identical_files(tmp_path, corpus):
    first = small_build(tmp_path, corpus, name="one")
    second = small_build(tmp_path, corpus, name="two")
    for name in ("tokens.bin", "vocab.parquet", "tokenizer/tokenizer.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert open_dataset(tmp_path, "one").sha256 == open_dataset(tmp_path, "two").sha256


@pytest.mark.parametrize("form", ["parquet", "json", "txt folder", "hf folder"])
def test_every_source_form_builds_the_same_tokens(tmp_path, form):
    docs = write_corpus(tmp_path / "corpus.jsonl")
    reference = small_build(tmp_path / "a", tmp_path / "corpus.jsonl")
    if form == "parquet":
        source = tmp_path / "corpus.parquet"
        pq.write_table(pa.table({"text": docs}), source)
    elif form == "json":
        source = tmp_path / "corpus.json"
        source.write_text(json.dumps([{"text": d} for d in docs]))
    elif form == "txt folder":
        source = tmp_path / "txt"
        source.mkdir()
        for i, doc in enumerate(docs):
            (source / f"{i:03d}.txt").write_text(doc)
    else:
        (tmp_path / "hf").mkdir()
        pq.write_table(pa.table({"text": docs}), tmp_path / "hf" / "train.parquet")
        source = f"hf:{tmp_path / 'hf'}"
    other = small_build(tmp_path / "b", source)
    assert (other / "tokens.bin").read_bytes() == (reference / "tokens.bin").read_bytes()


def test_a_source_failing_mid_build_leaves_nothing(tmp_path, corpus):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(corpus.read_text() + "{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:61: not valid JSON"):
        small_build(tmp_path / "home", bad, tokens=1_000_000, bpe_sample_chars=2_000)  # fails while tokenizing
    assert list((tmp_path / "home" / "data").iterdir()) == []


def test_a_killed_build_leaves_no_complete_looking_folder(tmp_path, corpus):
    home = tmp_path / "home"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from train.dataset import build_dataset\n"
              f"build_dataset({str(home)!r}, 'killed', source='stdlib', tokenizer='bpe:300', seq_len=64, "
              "tokens=50_000_000, windows='all', bpe_sample_chars=200_000, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in (home / "data").glob(".killed.tmp-*/tokens.bin")):
            assert proc.poll() is None and time.monotonic() < deadline, "the build ended before it could be killed"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (home / "data" / "killed").exists() and list_datasets(home) == []
    assert not list((home / "data").glob("*/manifest.json")) and not list((home / "data").glob(".*/manifest.json"))
    with pytest.raises(DataError, match="not found"):
        open_dataset(home, "killed")
    small_build(home, corpus, name="killed")  # builds anew, clearing the dead build's folder
    assert [p.name for p in (home / "data").iterdir()] == ["killed"]


def test_rebuilding_needs_force(tmp_path, corpus):
    small_build(tmp_path, corpus)
    with pytest.raises(DataError, match="already exists .* pass --force"):
        small_build(tmp_path, corpus, seq_len=8)
    small_build(tmp_path, corpus, seq_len=8, force=True)
    assert open_dataset(tmp_path, "small").seq_len == 8
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["small"]


# --- errors -----------------------------------------------------------------------------------------


def test_unknown_source_and_tokenizer_fail_before_anything_is_written(tmp_path, corpus):
    with pytest.raises(DataError, match="unknown source 'nowhere'"):
        build_dataset(tmp_path, "x", source="nowhere", progress=False)
    with pytest.raises(DataError, match="unknown tokenizer 'gpt3'"):
        small_build(tmp_path, corpus, tokenizer="gpt3")
    with pytest.raises(DataError, match="data set name 'a/b'"):
        small_build(tmp_path, corpus, name="a/b")
    assert not (tmp_path / "data").exists()


def test_missing_text_field(tmp_path, corpus):
    with pytest.raises(DataError, match=r"corpus\.jsonl:1: no field 'body' \(fields: text\)"):
        small_build(tmp_path, corpus, text_field="body")
    assert list((tmp_path / "data").iterdir()) == []


def test_empty_source(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    for name in ("empty.jsonl", "blank.jsonl"):
        with pytest.raises(DataError, match=f"source '.*{name}' is empty"):
            small_build(tmp_path, tmp_path / name)


def test_too_few_tokens_says_how_many_and_allow_short_builds_them(tmp_path, corpus):
    with pytest.raises(DataError, match="fewer than the 1,000,000 tokens asked for; pass --allow-short") as err:
        small_build(tmp_path, corpus, tokens=1_000_000)
    found = re.search(r"has only (\d+) sequences \(([\d,]+) tokens\) from (\d+) of (\d+) articles", str(err.value))
    n_sequences, n_tokens, kept, read = int(found[1]), int(found[2].replace(",", "")), int(found[3]), int(found[4])
    assert n_tokens == n_sequences * 17 and read == 60 and kept == n_sequences == 40
    small_build(tmp_path, corpus, tokens=1_000_000, allow_short=True)
    ds = open_dataset(tmp_path, "small")
    assert ds.n_sequences == n_sequences and ds.manifest["short"] is True


def test_id_dtype_follows_the_vocabulary_and_refuses_what_does_not_fit(tmp_path, corpus):
    assert choose_id_dtype(50_257) == "uint16" and choose_id_dtype(70_000) == "uint32"
    with pytest.raises(DataError, match="vocabulary of 70,000 ids does not fit uint16 .* use --dtype uint32"):
        choose_id_dtype(70_000, "uint16")
    with pytest.raises(DataError, match="does not fit uint32"):
        choose_id_dtype(2**32 + 1)
    small_build(tmp_path, corpus, dtype="uint32")
    assert open_dataset(tmp_path, "small").tokens.dtype == np.dtype("<u4")
    with pytest.raises(DataError, match="--dtype 'uint8'"):
        small_build(tmp_path, corpus, name="other", dtype="uint8")


# --- the reading side and verify ------------------------------------------------------------------


def test_open_dataset_gives_the_trainer_its_api(tmp_path, corpus):
    path = small_build(tmp_path, corpus)
    ds = open_dataset(tmp_path, "small")
    assert isinstance(ds.tokens, np.memmap) and ds.tokens.shape == (ds.n_sequences, ds.seq_len + 1) == (20, 17)
    assert ds.tokens.dtype == np.uint16 and ds.vocab_size == 300 and ds.path == path
    assert ds.manifest["sha256"] == ds.sha256 and len(ds.sha256) == 64
    (path / "manifest.json").unlink()
    with pytest.raises(DataError, match="incomplete"):
        open_dataset(tmp_path, "small")


def test_verify_catches_a_changed_byte(tmp_path, corpus):
    path = small_build(tmp_path, corpus)
    assert verify_dataset(tmp_path, "small") == []
    data = bytearray((path / "tokens.bin").read_bytes())
    data[5] ^= 1
    (path / "tokens.bin").write_bytes(bytes(data))
    problems = verify_dataset(tmp_path, "small")
    assert any("sha256" in p for p in problems) and any("count differs" in p for p in problems)


def test_stdlib_build_matches_whole_text_tokenization(tmp_path):
    path = build_dataset(tmp_path, "std", source="stdlib", tokenizer="bpe:512", seq_len=64, tokens=20_000,
                         bpe_sample_chars=300_000, progress=False)
    ds = open_dataset(tmp_path, "std")
    m = ds.manifest
    assert m["source_info"]["python_version"] == platform.python_version()
    assert m["tokenizer_info"]["trained_on"]["characters"] == 300_000
    assert verify_dataset(tmp_path, "std") == []
    tok = load_tokenizer(path / "tokenizer")
    first_docs = list(open_corpus("stdlib"))[:80]
    expected = reference_rows(first_docs, tok, 64, 65, "first")
    assert ds.tokens[: len(expected)].tolist() == expected and len(expected) > 20


# --- the command line ------------------------------------------------------------------------------


def test_cli_build_info_verify_and_errors(tmp_path, corpus):
    from cli import app

    runner = CliRunner()
    home = ["--home", str(tmp_path)]
    result = runner.invoke(app, ["data", "build", "--source", str(corpus), "--tokenizer", "bpe:300", "--seq-len", "16",
                                 "--tokens", "0.3K", "--bucket-tokens", "50", "--name", "c", "--quiet", *home])
    assert result.exit_code == 0, result.output
    assert open_dataset(tmp_path, "c").n_sequences == 18  # ceil(300 / 17)
    result = runner.invoke(app, ["data", "info", "c", *home])
    assert result.exit_code == 0 and "bucket" in result.output and "sequence 0:" in result.output
    result = runner.invoke(app, ["data", "verify", "c", *home])
    assert result.exit_code == 0 and "ok" in result.output
    result = runner.invoke(app, ["data", "build", "--source", str(corpus), "--name", "c", "--quiet", *home])
    assert result.exit_code == 2 and "already exists" in result.output
    result = runner.invoke(app, ["data", "build", "--tokens", "3X", *home])
    assert result.exit_code == 2 and "--tokens '3X'" in result.output
    result = runner.invoke(app, ["data", "verify", "missing", *home])
    assert result.exit_code == 2 and "not found" in result.output
