"""Corpus sources and tokenizers: each file format, hf: streaming from a local folder, BPE and gpt2."""

from __future__ import annotations

import json
import random
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from train.corpus import DataError, network_reachable, open_corpus, parse_hf_spec
from train.tokenizer import (
    GPT2_HOST,
    bytes_to_unicode,
    is_word_start,
    load_gpt2,
    load_tokenizer,
    parse_tokenizer_spec,
    safe_pieces,
    safe_prefix,
    train_bpe,
)

DOCS = ["first document", "second one, with ünïcode", "", "third\nline two"]


@pytest.fixture(autouse=True)
def hf_cache_in_tmp(tmp_path, monkeypatch):
    """Keep the lock files `datasets` writes while streaming out of ~/.cache."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


# --- local files: each format ------------------------------------------------------------------


def test_jsonl_source_reads_records_in_order_and_null_as_empty(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS)] + ["", json.dumps({"text": None})]
    path.write_text("\n".join(lines) + "\n")
    assert list(open_corpus(str(path))) == DOCS + [""]


def test_json_source_reads_an_array_or_one_object(tmp_path):
    (tmp_path / "many.json").write_text(json.dumps([{"body": d} for d in DOCS]))
    (tmp_path / "one.json").write_text(json.dumps({"body": "only one"}))
    assert list(open_corpus(str(tmp_path / "many.json"), text_field="body")) == DOCS
    assert list(open_corpus(str(tmp_path / "one.json"), text_field="body")) == ["only one"]


def test_parquet_source_reads_the_text_column(tmp_path):
    pq.write_table(pa.table({"n": list(range(len(DOCS))), "text": DOCS}), tmp_path / "a.parquet", row_group_size=2)
    assert list(open_corpus(str(tmp_path / "a.parquet"))) == DOCS


def test_txt_folder_is_one_document_per_file_sorted_recursively(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "1.txt").write_text("one")
    (tmp_path / "a.txt").write_bytes(b"bad \xff byte")  # not UTF-8: decoded with replacement
    (tmp_path / "skip.csv").write_text("not a source file")
    (tmp_path / ".hidden.txt").write_text("hidden files are skipped")
    assert list(open_corpus(str(tmp_path))) == ["one", "bad \ufffd byte", "two"]


def test_glob_and_several_sources_read_in_order(tmp_path):
    for name in ("x2.txt", "x1.txt", "y.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "z.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n")
    corpus = open_corpus([str(tmp_path / "x*.txt"), str(tmp_path / "z.jsonl")])
    assert list(corpus) == ["x1.txt", "x2.txt", "from jsonl"]


def test_hf_source_streams_a_local_dataset_folder(tmp_path):
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "train.parquet")
    corpus = open_corpus(f"hf:{tmp_path}")
    assert list(corpus) == DOCS
    assert corpus.describe()["split"] == "train"


def test_hf_spec_parsing():
    assert parse_hf_spec("hf:org/name") == ("org/name", None, "train")
    assert parse_hf_spec("hf:org/name/validation") == ("org/name", None, "validation")
    assert parse_hf_spec("hf:org/name:en/test") == ("org/name", "en", "test")
    assert parse_hf_spec("hf:imdb:/test") == ("imdb", None, "test")
    with pytest.raises(DataError, match="expected hf:NAME"):
        parse_hf_spec("hf:")


def test_hf_hub_source_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE"):
        list(open_corpus("hf:someorg/somedata"))


def test_stdlib_source_is_sorted_python_files_then_doc_topics():
    corpus = open_corpus("stdlib")
    names = [p.relative_to(corpus.root).as_posix() for p in corpus.files]
    assert names == sorted(names) and len(names) > 500
    assert not any("site-packages" in n for n in names)
    info = corpus.describe()
    assert info["python_version"].count(".") == 2 and info["n_doc_topics"] > 0


# --- source errors -----------------------------------------------------------------------------


def test_unknown_source(tmp_path):
    with pytest.raises(DataError, match="unknown source 'no_such_thing'"):
        open_corpus("no_such_thing")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        open_corpus(str(tmp_path / "x.csv"))
    with pytest.raises(DataError, match="no files match"):
        open_corpus(str(tmp_path / "*.jsonl"))


def test_missing_text_field_names_file_line_and_fields(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "x", "id": 1}) + "\n")
    with pytest.raises(DataError, match=r"a\.jsonl:2: no field 'text' \(fields: body, id\); pass --text-field"):
        list(open_corpus(str(path)))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet: no column 'text' \(columns: body\)"):
        list(open_corpus(str(tmp_path / "b.parquet")))
    (tmp_path / "hf").mkdir()
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "hf" / "train.parquet")
    with pytest.raises(DataError, match="no field 'text'"):
        list(open_corpus(f"hf:{tmp_path / 'hf'}"))


def test_empty_folder_is_an_empty_source(tmp_path):
    with pytest.raises(DataError, match="is empty"):
        open_corpus(str(tmp_path))


# --- tokenizers --------------------------------------------------------------------------------


def sample_texts(n_docs: int = 40, seed: int = 0) -> list[str]:
    """Small English-like documents with contractions, numbers, unicode and odd whitespace."""
    rng = random.Random(seed)
    words = ["the", "cat", "isn't", "they'll", "we've", "run", "42", "3.14", "naïve", "café", "日本",
             "(x)", "--", "def", "return", "  ", "\t", "\n", "\n\n", "x_y", "CamelCase", "I'm", "'quoted'"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 300))) for _ in range(n_docs)]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(sample_texts(), 300)


def test_parse_tokenizer_spec():
    assert parse_tokenizer_spec("gpt2") == ("gpt2", None)
    assert parse_tokenizer_spec("bpe:4096") == ("bpe", 4096)
    with pytest.raises(DataError, match="unknown tokenizer 'llama'"):
        parse_tokenizer_spec("llama")
    with pytest.raises(DataError, match="N >= 256"):
        parse_tokenizer_spec("bpe:100")


def test_bpe_has_exactly_n_ids_and_is_deterministic(bpe):
    assert bpe.vocab_size == 300
    again = train_bpe(sample_texts(), 300)
    assert again._tok.to_str() == bpe._tok.to_str()


def test_bpe_too_large_for_its_sample_is_a_clear_error():
    with pytest.raises(DataError, match="only yields"):
        train_bpe(["ab ab ab"], 400)


def test_bpe_round_trips_and_token_bytes_match_decode(bpe):
    text = sample_texts(1, seed=7)[0]
    assert bpe.decode(bpe.encode_batch([text])[0]) == text
    token_bytes = bpe.token_bytes()
    assert sorted(set(token_bytes[:256])) == [bytes([b]) for b in range(256)]  # the byte alphabet comes first
    for i, raw in enumerate(token_bytes):
        try:
            expected = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert bpe.decode([i]) == expected


def test_bytes_to_unicode_matches_tokenizers_alphabet():
    from tokenizers import pre_tokenizers

    assert sorted(bytes_to_unicode().values()) == sorted(pre_tokenizers.ByteLevel.alphabet())


def test_is_word_start():
    assert is_word_start(" the") and is_word_start("\n") and is_word_start("\tx") and is_word_start("\xa0x")
    assert not is_word_start("the") and not is_word_start("") and not is_word_start("<|endoftext|>")
    assert not is_word_start("\\xe2")  # a partial UTF-8 byte, written as text
    assert not is_word_start("\x1cx")  # an ASCII separator: str.isspace() says yes, Unicode says no


def test_saved_tokenizer_loads_and_decodes_offline(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    ids = bpe.encode_batch(["they'll run 42 times"])[0]
    assert loaded.vocab_size == 300 and loaded.decode(ids) == "they'll run 42 times"


def test_safe_cuts_never_change_tokens(bpe):
    """Tokens of a safe prefix begin the whole text's tokens; tokens of safe pieces join to them."""
    texts = sample_texts(30, seed=3) + ["it's a b'll c 'll  d\n\n e\t f"]
    whole = bpe.encode_batch(texts)
    for n_chars in (1, 5, 17, 64, 200):
        prefixes = [safe_prefix(t, n_chars) for t in texts]
        for text, prefix, ids, prefix_ids in zip(texts, prefixes, whole, bpe.encode_batch(prefixes)):
            assert text.startswith(prefix) and (len(prefix) >= n_chars or prefix == text)
            assert prefix_ids == ids[: len(prefix_ids)]
        for text, ids in zip(texts, whole):
            pieces = safe_pieces(text, n_chars)
            assert "".join(pieces) == text
            assert [i for piece_ids in bpe.encode_batch(pieces) for i in piece_ids] == ids


def test_gpt2_without_cached_files_fails_fast_with_instructions(tmp_path, monkeypatch):
    if network_reachable(GPT2_HOST, timeout=1.0):
        pytest.skip("the network is reachable here: tiktoken would download the files")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_gpt2()
    assert time.perf_counter() - started < 10
    message = str(err.value)
    assert "TIKTOKEN_CACHE_DIR" in message and "bpe:N" in message and str(tmp_path) in message
    assert "\n" not in message


# --- the tiktoken path, offline: a tiny encoding with GPT-2's split pattern ----------------------


@pytest.fixture(scope="module")
def tiny_tiktoken():
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    from train.tokenizer import TiktokenTokenizer

    ranks = {bytes([b]): b for b in range(256)} | {b" t": 256, b"he": 257, b" the": 258, b"at": 259}
    encoding = tiktoken.Encoding(name="tiny", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": 260})
    return TiktokenTokenizer(encoding, "tiny")


def test_tiktoken_tokenizer_saves_and_loads_offline(tiny_tiktoken, tmp_path):
    ids = tiny_tiktoken.encode_batch(["the cat sat", "<|endoftext|> is plain text here"])
    assert ids[0][:2] == [ord("t"), 257] and 258 not in ids[0]  # "the" at the start has no space
    assert 260 not in ids[1]
    tiny_tiktoken.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.vocab_size == 261 and loaded.token_bytes() == tiny_tiktoken.token_bytes()
    assert loaded.encode_batch(["see the cat"]) == tiny_tiktoken.encode_batch(["see the cat"])
    assert loaded.decode(ids[0]) == "the cat sat"


def test_safe_cuts_never_change_tiktoken_tokens(tiny_tiktoken):
    texts = sample_texts(30, seed=5) + ["it's a b'll c 'll  d\n\n e\t f 123 456"]
    whole = tiny_tiktoken.encode_batch(texts)
    for n_chars in (1, 7, 50, 300):
        for text, ids in zip(texts, whole):
            prefix = safe_prefix(text, n_chars)
            prefix_ids = tiny_tiktoken.encode_batch([prefix])[0]
            assert prefix_ids == ids[: len(prefix_ids)]
            pieces = safe_pieces(text, n_chars)
            assert [i for piece_ids in tiny_tiktoken.encode_batch(pieces) for i in piece_ids] == ids
