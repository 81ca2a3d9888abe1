"""Bytes per token of the live loss table and of a release, and how fast export and verify run.

    .venv/bin/python bench/bench_export.py                    # 10.5M rows (10,240 sequences of 1,024)
    .venv/bin/python bench/bench_export.py --sequences 20480  # twice as many: export memory stays flat

A realistic synthetic run, written through LossWriter exactly as the trainer writes it:

- token ids Zipf-distributed (exponent 1.1) over a 50,257-id vocabulary, ids shuffled so that id
  order says nothing about frequency (lossdb.synthetic.make_dataset), seq_len 1,024;
- losses with a real model's spread: Gamma(0.8)-shaped around a mean that grows with the token's
  frequency rank and shrinks with position, so ~10% of tokens are under 0.2 nats, the median is
  ~1.7 and the tail reaches past 20 nats (mean ~3.2 nats); float16-rounded by the writer.

Then `cli.py export` and `cli.py export --verify` run in child processes, so their peak memory
(max RSS) is measured alone. Goal (issue 6): <= 3.5 bytes per token per run on disk, token ids
included. Prints per-column bytes per token of the release's shards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lossdb.synthetic import SyntheticDataset, make_dataset  # noqa: E402
from lossdb.writer import LossWriter  # noqa: E402

RUN = "bench"
GOAL_BYTES_PER_TOKEN = 3.5


def realistic_losses(rng, frequency_rank: np.ndarray, position: np.ndarray) -> np.ndarray:
    """(B, T) losses in nats: a Gamma(0.8) spread around a mean set by rarity and context length."""
    mean = 1.0 + 0.4 * np.log1p(frequency_rank) + 2.0 / np.sqrt(1.0 + position)  # (B, T)
    return (rng.gamma(0.8, 1.0, size=mean.shape) * mean / 0.8).astype(np.float32)


def write_run(home: Path, n_sequences: int, seq_len: int, vocab_size: int, batch: int) -> int:
    """The data set's vocabulary and the run's losses (LossWriter) and run.json; returns rows."""
    data = make_dataset(home, SyntheticDataset("bench", n_sequences=n_sequences, seq_len=seq_len,
                                               vocab_size=vocab_size, bucket_tokens=n_sequences * seq_len // 25))
    rank = data.column("rank").astype(np.float64)
    rng = np.random.default_rng(1)
    order = rng.permutation(n_sequences)
    steps = n_sequences // batch
    segment_tokens = steps * batch * seq_len // 10
    position = np.arange(seq_len)[None, :]  # (1, T)
    with LossWriter(home / "lossdb", RUN) as writer:
        for step in range(steps):
            seq = order[step * batch : (step + 1) * batch]  # (B,)
            targets = data.tokens[seq, 1:]  # (B, T)
            loss = realistic_losses(rng, rank[targets], position)
            writer.write(step, step * batch * seq_len // segment_tokens, seq, targets, loss)
    rows = steps * batch * seq_len
    info = {
        "run": RUN, "status": "finished", "dataset": "bench", "seed": 1, "tokens_trained": rows,
        "segment_tokens": segment_tokens,
        "config": {"model": {"n_layer": 12, "d_model": 768, "seq_len": seq_len}, "data": {"dataset": "bench"}},
    }
    (home / "runs" / RUN).mkdir(parents=True)
    (home / "runs" / RUN / "run.json").write_text(json.dumps(info))
    return rows


def child(args: list[str]) -> tuple[float, float]:
    """Run `python cli.py ARGS`; (wall seconds, peak RSS of that child in MB)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], stdout=output, stderr=output)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            output.seek(0)
            sys.exit(f"cli.py {' '.join(args)} failed:\n{output.read()}")
    return wall, usage.ru_maxrss / 1024


def bytes_of(paths) -> int:
    return sum(p.stat().st_size for p in paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=10_240, help="sequences of seq_len tokens (rows = this x seq_len)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50_257)
    parser.add_argument("--batch", type=int, default=32, help="sequences per optimizer step")
    parser.add_argument("--keep", type=Path, default=None, help="keep the workspace and release in this folder")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-export-"))
    home, out = folder / "ws", folder / "release"
    try:
        started = time.perf_counter()
        rows = write_run(home, args.sequences, args.seq_len, args.vocab, args.batch)
        print(f"wrote {rows:,} rows through LossWriter in {time.perf_counter() - started:.1f} s")

        export_s, export_rss = child(["export", "--runs", RUN, "--out", str(out), "--home", str(home), "--quiet"])
        verify_s, verify_rss = child(["export", "--verify", str(out)])

        live_parts = list((home / "lossdb" / "losses").rglob("part-*.parquet"))
        rollups = list((home / "lossdb" / "rollups").rglob("part-*.parquet"))
        shards = sorted((out / "data").rglob("*.parquet"))
        release_all = [p for p in out.rglob("*") if p.is_file()]
        live, release = bytes_of(live_parts) / rows, bytes_of(shards) / rows
        print(f"\nrows: {rows:,} (seq_len {args.seq_len}, vocab {args.vocab:,})")
        print(f"live table   : {live:.3f} bytes/token ({len(live_parts)} part files); "
              f"with rollups {(bytes_of(live_parts) + bytes_of(rollups)) / rows:.3f}")
        print(f"release      : {release:.3f} bytes/token ({len(shards)} shard(s)); whole folder "
              f"(vocab, runs, card, sums) {bytes_of(release_all) / rows:.3f}")
        print(f"goal         : <= {GOAL_BYTES_PER_TOKEN} bytes/token per run: "
              f"release {'met' if release <= GOAL_BYTES_PER_TOKEN else 'MISSED'}, "
              f"live table {'met' if live <= GOAL_BYTES_PER_TOKEN else 'missed'}")
        print(f"export       : {export_s:.1f} s wall incl. its verify pass ({rows / export_s / 1e6:.2f} M rows/s), "
              f"peak RSS {export_rss:.0f} MB")
        print(f"verify       : {verify_s:.1f} s wall ({rows / verify_s / 1e6:.2f} M rows/s), peak RSS {verify_rss:.0f} MB")

        per_column: dict[str, int] = {}
        for shard in shards:
            metadata = pq.ParquetFile(shard).metadata
            for g in range(metadata.num_row_groups):
                for c in range(metadata.num_columns):
                    column = metadata.row_group(g).column(c)
                    per_column[column.path_in_schema] = per_column.get(column.path_in_schema, 0) + column.total_compressed_size
        print("release columns, bytes/token: " + ", ".join(f"{k} {v / rows:.3f}" for k, v in per_column.items()))
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
