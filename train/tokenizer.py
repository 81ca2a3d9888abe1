"""Tokenizers for article data sets: GPT-2 through tiktoken, or a byte-level BPE trained on the source.

Specs (`--tokenizer`):

- `gpt2`: tiktoken's GPT-2 encoding (50,257 ids, `<|endoftext|>` = 50256). tiktoken downloads
  two files on first use and caches them (in $TIKTOKEN_CACHE_DIR, else $DATA_GYM_CACHE_DIR, else
  <tmp>/data-gym-cache). When they are not cached and the network cannot be reached we fail at
  once, saying how to provide them, instead of letting the download hang or retry.
- `bpe:N`: a byte-level BPE with exactly N ids (N >= 256, the byte alphabet), trained with
  Hugging Face `tokenizers` on a sample of the source (GPT-2's pre-tokenizer regex, no special
  tokens, no prefix space). Training is deterministic: the same sample gives the same merges.

Every tokenizer can `save(folder)` what decoding needs, and `load_tokenizer(folder)` reads it back
without the network. `tokenizers` and `tiktoken` are imported lazily, inside functions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from train.corpus import DataError, network_reachable

INFO_FILE = "info.json"
BPE_FILE = "tokenizer.json"
TIKTOKEN_FILE = "gpt2.tiktoken"

# The files tiktoken's "gpt2" encoding reads, with their sha256 (from tiktoken_ext/openai_public.py).
GPT2_HOST = "https://openaipublic.blob.core.windows.net"
GPT2_FILES = {
    f"{GPT2_HOST}/gpt-2/encodings/main/vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    f"{GPT2_HOST}/gpt-2/encodings/main/encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def parse_tokenizer_spec(spec: str) -> tuple[str, int | None]:
    """`gpt2` → ("gpt2", None); `bpe:4096` → ("bpe", 4096). Raises DataError otherwise."""
    if spec == "gpt2":
        return "gpt2", None
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:].replace("_", ""))
        except ValueError:
            n = -1
        if n < 256:
            raise DataError(f"tokenizer {spec!r}: bpe:N needs a whole N >= 256 (the byte alphabet), e.g. bpe:4096")
        return "bpe", n
    raise DataError(f"unknown tokenizer {spec!r}: use gpt2 or bpe:N (e.g. bpe:4096)")


# Python's str.isspace() also counts the ASCII separators \x1c-\x1f, which are not Unicode
# White_Space and which the tokenizers' `\s` does not match.
_NOT_WHITE_SPACE = frozenset("\x1c\x1d\x1e\x1f")


def is_word_start(text: str) -> bool:
    """Whether a token's text begins with whitespace (GPT-2's `Ġ` space, or a newline, tab, ...).

    The study's split between word-start tokens and sub-word continuations. Whitespace is
    Unicode's White_Space, which is what the tokenizers' split regex treats as whitespace.
    """
    return text[:1].isspace() and text[0] not in _NOT_WHITE_SPACE


def token_text(token: bytes) -> str:
    """A token's bytes as text; bytes that are not whole UTF-8 characters become `\\xNN`."""
    return token.decode("utf-8", errors="backslashreplace")


class BpeTokenizer:
    """A byte-level BPE from Hugging Face `tokenizers`."""

    kind = "bpe"

    def __init__(self, hf_tokenizer, spec: str):
        self._tok = hf_tokenizer
        self.spec = spec
        self.vocab_size = hf_tokenizer.get_vocab_size()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, tokenized in parallel by `tokenizers`' thread pool."""
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # _fast: no offsets
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> list[bytes]:
        """The bytes of every id, in id order."""
        to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
        by_id = sorted((i, piece) for piece, i in self._tok.get_vocab().items())
        return [bytes(to_byte[c] for c in piece) for _, piece in by_id]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(folder / BPE_FILE))
        _write_info(folder, {"kind": self.kind, "spec": self.spec, "file": BPE_FILE, "vocab_size": self.vocab_size})


class TiktokenTokenizer:
    """A tiktoken encoding (GPT-2's)."""

    kind = "tiktoken"

    def __init__(self, encoding, spec: str):
        self._enc = encoding
        self.spec = spec
        self.vocab_size = encoding.n_vocab

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text; special-token strings in the text are encoded as plain text."""
        return self._enc.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids], errors="replace")

    def token_bytes(self) -> list[bytes]:
        return [self._enc.decode_single_token_bytes(i) for i in range(self.vocab_size)]

    def save(self, folder: Path) -> None:
        """The mergeable ranks in tiktoken's own file format, and the split pattern and specials."""
        folder.mkdir(parents=True, exist_ok=True)
        specials = {s: self._enc.encode_single_token(s) for s in sorted(self._enc.special_tokens_set)}
        special_ids = set(specials.values())
        lines = [f"{base64.b64encode(self._enc.decode_single_token_bytes(i)).decode()} {i}\n"
                 for i in range(self.vocab_size) if i not in special_ids]
        (folder / TIKTOKEN_FILE).write_text("".join(lines))
        _write_info(folder, {"kind": self.kind, "spec": self.spec, "name": self._enc.name, "file": TIKTOKEN_FILE,
                             "pat_str": self._enc._pat_str, "special_tokens": specials,
                             "vocab_size": self.vocab_size})


Tokenizer = BpeTokenizer | TiktokenTokenizer


def _write_info(folder: Path, info: dict) -> None:
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table, which byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


# --- cutting texts where tokenization cannot change --------------------------------------------


# A cut between an ASCII letter/digit and a space never splits a pre-token of GPT-2's split regex
# (which both tokenizers use): the letter or number run ends there whatever follows, and no
# contraction or whitespace rule can reach across it. Tokens never cross pre-tokens, and the
# regex scan of the whole text resumes at the cut just as a scan of the rest would start. So the
# tokens of text[:cut] begin the whole text's tokens, and those of text[cut:] are the rest
# (tests/test_data_sources.py checks both against whole-text tokenization).
_SAFE_CUT = re.compile(r"[A-Za-z0-9](?= )")


def safe_prefix(text: str, n_chars: int) -> str:
    """A prefix of at least `n_chars` characters whose tokens begin the whole text's tokens."""
    if len(text) <= n_chars:
        return text
    match = _SAFE_CUT.search(text, max(n_chars - 1, 0))
    return text if match is None else text[: match.end()]


def safe_pieces(text: str, n_chars: int) -> list[str]:
    """`text` cut at safe points into pieces of at least `n_chars` (but the last): their tokens,
    joined, are the whole text's."""
    pieces, start = [], 0
    while len(text) - start > n_chars:
        match = _SAFE_CUT.search(text, start + max(n_chars - 1, 0))
        if match is None:
            break
        pieces.append(text[start : match.end()])
        start = match.end()
    pieces.append(text[start:])
    return pieces


# --- bpe:N --------------------------------------------------------------------------------------


def train_bpe(texts: Sequence[str], vocab_size: int, progress: bool = False) -> BpeTokenizer:
    """A byte-level BPE with exactly `vocab_size` ids learned from `texts` (deterministic)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=progress)
    tok.train_from_iterator(texts, trainer, length=len(texts))
    if tok.get_vocab_size() != vocab_size:
        raise DataError(f"tokenizer bpe:{vocab_size}: the training sample ({sum(map(len, texts)):,} characters) "
                        f"only yields {tok.get_vocab_size()} ids; use a smaller N or a larger source")
    return BpeTokenizer(tok, f"bpe:{vocab_size}")


# --- gpt2 ---------------------------------------------------------------------------------------


def tiktoken_cache_dir() -> str:
    """Where tiktoken looks for its files (mirrors tiktoken.load.read_file_cached)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _cached(cache_dir: str, url: str, sha256: str) -> bool:
    """Whether tiktoken's cache holds `url`'s file with the right hash (it re-downloads otherwise)."""
    if not cache_dir:  # TIKTOKEN_CACHE_DIR="" turns tiktoken's cache off
        return False
    path = Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def load_gpt2() -> TiktokenTokenizer:
    """tiktoken's GPT-2 encoding; fails at once if its files are neither cached nor downloadable."""
    cache_dir = tiktoken_cache_dir()
    missing = [url for url, sha in GPT2_FILES.items() if not _cached(cache_dir, url, sha)]
    if missing and not network_reachable(GPT2_HOST):
        names = ", ".join(f"{url.rsplit('/', 1)[1]} as {hashlib.sha1(url.encode()).hexdigest()}" for url in missing)
        raise DataError(
            f"tokenizer gpt2: tiktoken's GPT-2 files are not cached in {cache_dir or '(cache off)'} and {GPT2_HOST} "
            f"cannot be reached; put {names} in a folder and set TIKTOKEN_CACHE_DIR to it, "
            "or use --tokenizer bpe:N (trained offline on the source)")
    import tiktoken

    return TiktokenTokenizer(tiktoken.get_encoding("gpt2"), "gpt2")


# --- from a spec, from a folder -----------------------------------------------------------------


def load_tokenizer(folder: str | os.PathLike) -> Tokenizer:
    """The tokenizer a data set saved in its `tokenizer/` folder; works offline."""
    folder = Path(folder)
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        raise DataError(f"{folder}: no tokenizer here (missing {INFO_FILE})")
    info = json.loads(info_path.read_text())
    if info["kind"] == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BpeTokenizer(HFTokenizer.from_file(str(folder / info["file"])), info["spec"])
    if info["kind"] == "tiktoken":
        import tiktoken

        ranks = {}
        for line in (folder / info["file"]).read_text().splitlines():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        encoding = tiktoken.Encoding(name=info["name"], pat_str=info["pat_str"], mergeable_ranks=ranks,
                                     special_tokens=info["special_tokens"], explicit_n_vocab=info["vocab_size"])
        return TiktokenTokenizer(encoding, info["spec"])
    raise DataError(f"{info_path}: unknown tokenizer kind {info['kind']!r}")
