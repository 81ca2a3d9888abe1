"""Throughput of `data build`'s pipeline against the tokenizer's batch encoding alone.

    .venv/bin/python bench/bench_data.py [--tokens 1M] [--seq-len 1024] [--vocab 4096] [--repeat 3]

For each tokenizer (bpe:N trained here on the stdlib sample; gpt2 when tiktoken's files are
cached) and each window rule, it times, in this one process so both see the same machine load:

- pipeline: `write_tokens` from a fresh stdlib iterator: read, tokenize, filter, write
  tokens.bin (BPE training excluded: "once trained");
- encode_batch alone (the last column): the tokenizer's batch encoding of the whole texts of
  the same articles the pipeline read, already in memory, in one call (for bpe:N this is
  `tokenizers`' `encode_batch`).

Without tiktoken's GPT-2 files it times a stand-in instead: tiktoken running the trained BPE's
vocabulary, to show what the gpt2 code path reaches.

Figures: "written" is tokens in tokens.bin per second; "covered" is the whole-text token count of
the articles the pipeline read (measured by the encode_batch run), divided by the pipeline's
time: the rate at which it gets through the source. encode_batch alone has to tokenize every
token of those articles, so "covered" is the like-for-like comparison. Best of --repeat runs,
the two measurements alternating so that both see the same load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.config import parse_size  # noqa: E402
from train.corpus import DataError, open_corpus  # noqa: E402
from train.dataset import ID_DTYPES, check_options, choose_id_dtype, write_tokens  # noqa: E402
from train.tokenizer import load_gpt2, train_bpe  # noqa: E402


def bench_one(tok, texts: list[str], opts, repeat: int) -> dict:
    """Best-of-`repeat` times of the pipeline and of encode_batch alone, run in alternation."""
    dtype = ID_DTYPES[choose_id_dtype(tok.vocab_size)]
    best_pipeline = best_encode = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            started = time.perf_counter()
            written = write_tokens(Path(tmp) / "tokens.bin", iter(open_corpus("stdlib")), tok, opts, dtype,
                                   progress=False)
            best_pipeline = min(best_pipeline, time.perf_counter() - started)
            read = texts[: written.articles_read]
            started = time.perf_counter()
            ids = tok.encode_batch(read)
            best_encode = min(best_encode, time.perf_counter() - started)
    return {"articles": written.articles_read, "written": written.n_sequences * opts.width,
            "covered": sum(map(len, ids)), "pipeline_s": best_pipeline, "encode_s": best_encode}


def tiktoken_stand_in(bpe):
    """A tiktoken encoding over the BPE's vocabulary (rank = id): the gpt2 code path without its files."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    from train.tokenizer import TiktokenTokenizer

    ranks = {token: i for i, token in enumerate(bpe.token_bytes())}
    encoding = tiktoken.Encoding(name="stand-in", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={})
    return TiktokenTokenizer(encoding, f"tiktoken-{bpe.vocab_size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="1M")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tokens = parse_size(args.tokens)

    texts = list(open_corpus("stdlib"))
    print(f"stdlib: {len(texts):,} documents, {sum(map(len, texts)) / 1e6:.1f}M characters; "
          f"{os.cpu_count()} CPUs; --tokens {tokens:,} --seq-len {args.seq_len}")
    sample, total = [], 0
    for text in texts:  # the same sample rule as build_dataset: the first 8M characters
        sample.append(text[: 8_000_000 - total])
        total += len(sample[-1])
        if total >= 8_000_000:
            break
    started = time.perf_counter()
    tokenizers = [train_bpe(sample, args.vocab)]
    seconds = time.perf_counter() - started
    print(f"bpe:{args.vocab} trained on {total:,} characters in {seconds:.1f} s (not counted below)")
    try:
        tokenizers.append(load_gpt2())
    except DataError as err:
        print(f"gpt2 skipped: {err}")
        tokenizers.append(tiktoken_stand_in(tokenizers[0]))
        print("instead: tiktoken-4096, tiktoken running bpe's vocabulary as ranks with GPT-2's split pattern, "
              "to measure the tiktoken path (speed only: not a tokenizer the builder offers)")

    print(f"{'tokenizer':<14} {'windows':<7} {'articles':>8} {'written':>10} {'covered':>11} "
          f"{'pipeline s':>10} {'written/s':>10} {'covered/s':>10} {'encode_batch/s':>15}")
    for tok in tokenizers:
        for windows in ("first", "all"):
            # "all" would otherwise need most of the corpus at 1M tokens; same token budget for both.
            opts = check_options(args.seq_len, None, tokens, None, windows)
            r = bench_one(tok, texts, opts, args.repeat)
            print(f"{tok.spec:<14} {windows:<7} {r['articles']:>8,} {r['written']:>10,} {r['covered']:>11,} "
                  f"{r['pipeline_s']:>10.2f} {r['written'] / r['pipeline_s'] / 1e6:>9.2f}M "
                  f"{r['covered'] / r['pipeline_s'] / 1e6:>9.2f}M {r['covered'] / r['encode_s'] / 1e6:>14.2f}M")


if __name__ == "__main__":
    main()
