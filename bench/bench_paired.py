"""Speed of the paired comparison: the positional join of analysis/paired.py vs DuckDB joins.

    .venv/bin/python bench/bench_paired.py                   # 2 x 100M rows, 500M by hard links
    .venv/bin/python bench/bench_paired.py --rows 20000000   # a quicker look
    taskset -c 0,1 .venv/bin/python bench/bench_paired.py    # pinned to 2 cores of a bigger box

Writes two synthetic runs over one data set in the same order (lossdb.synthetic, through
LossWriter: run b = run a's losses x 0.97, same noise) into a temp folder, times the pairing,
prints the figures and deletes the folder (unless --keep DIR). Goal (issue 8): the full set of
paired curves of two 500M-token runs in <= 30 s on 2 cores.

Measured:
- `pair_runs` (every grouping's sums: segment, position, position bins, bucket, word start,
  token ids) and then every table: the full set of paired curves. Extrapolated linearly from
  --rows to 500M, and measured on 500M-row runs made of hard links to the same part files
  (--links; a real 500M-row read of repeated rows, so no extra disk, but files stay in the page
  cache as they are re-read: disk speed is not measured).
- the example-context pass over the last segment (`token_contexts`, a second, smaller pass).
- the same per-segment mean through DuckDB: the `paired` macro (hash join) on one segment, and
  DuckDB's POSITIONAL JOIN of the two runs' files of one segment; both extrapolated to 500M.
Wall times count whatever else runs on the machine; CPU seconds / threads estimate idle cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lossdb  # noqa: E402
from analysis import paired  # noqa: E402
from lossdb.synthetic import SyntheticDataset, SyntheticRun, make_dataset, write_run  # noqa: E402

GOAL_TOKENS = 500_000_000
GOAL_S = 30.0


class Clock:
    """Wall and CPU seconds (this process, all threads) of a `with` block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def write_pair(home: Path, args) -> None:
    n_seq = -(-args.rows // args.seq_len)
    steps = n_seq // args.batch
    tokens = steps * args.batch * args.seq_len
    print(f"# writing 2 runs of {tokens:,} rows: {steps} steps x {args.batch} x {args.seq_len}, "
          f"vocab {args.vocab:,} -> {home}")
    with Clock() as clock:
        dataset = make_dataset(home, SyntheticDataset(name="bench", n_sequences=n_seq, seq_len=args.seq_len,
                                                      vocab_size=args.vocab, bucket_tokens=tokens // 25))
        for name, quality in (("a", 1.0), ("b", 0.97)):  # the same seed: the same data order
            spec = SyntheticRun(name, dataset="bench", steps=steps, batch_size=args.batch,
                                segment_tokens=-(-tokens // args.segments), quality=quality)
            write_run(home, spec, dataset, keep_rows=False)
    print(f"written in {clock.wall:.1f} s")


def link_copies(home: Path, out: Path, copies: int) -> None:
    """A workspace whose runs hold `copies` hard links of each part (named part-<rank>-<first_step><k>):
    both runs get the same links in the same order, so they still pair row by row."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(home / "data", out / "data")
    shutil.copytree(home / "runs", out / "runs")
    for path in (home / "lossdb" / "losses").rglob("part-*.parquet"):
        target = out / path.parent.relative_to(home)
        target.mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            os.link(path, target / f"{path.stem}{k}.parquet")


def full_set(con) -> tuple[Clock, Clock, paired.PairedResult]:
    with Clock() as passing:
        result = paired.pair_runs(con, "a", "b")
    with Clock() as tables:
        for by in paired.GROUPINGS:
            paired.group_table(result, by)
            paired.group_table(result, by, per_segment=True)
        paired.summary_table(result)
        paired.token_table(result, min_count=100)
    return passing, tables, result


def report(label: str, clock: Clock, rows: int, threads: int) -> None:
    scale = GOAL_TOKENS / rows
    print(f"{label:44s} {clock.wall:7.2f} s wall {clock.cpu:7.2f} s CPU ({rows:,} rows/run); "
          f"x{scale:.2f} for 500M: {clock.wall * scale:6.1f} s wall, {clock.cpu * scale / threads:6.1f} s idle")


def report_fixed(label: str, clock: Clock) -> None:
    """A step whose cost does not grow with the rows (tables from the sums, a one-segment pass)."""
    print(f"{label:44s} {clock.wall:7.2f} s wall {clock.cpu:7.2f} s CPU (does not grow with the rows)")


def duckdb_segment(home: Path, args, rows: int, segment: int) -> None:
    con = lossdb.connect(home)
    con.execute(f"SET threads = {args.threads}")
    seg_rows = con.sql("SELECT sum(n) FROM _step_sums WHERE run = 'a' AND segment = $s", params={"s": segment}).fetchall()[0][0]
    seg_rows = int(seg_rows)
    with Clock() as clock:
        con.sql(f"SELECT avg(delta), count(*) FROM paired('a', 'b', segments := [{segment}])").fetchall()
    report(f"DuckDB paired() hash join, segment {segment}", clock, seg_rows, args.threads)
    files = {run: [p.file for p in paired.run_parts(con, run, [segment])] for run in ("a", "b")}
    lists = {run: "[" + ", ".join(f"'{f}'" for f in fs) + "]" for run, fs in files.items()}
    with Clock() as clock:
        con.sql(
            f"""SELECT avg(CAST(b.loss AS DOUBLE) - a.loss), count(*),
                       count(*) FILTER (WHERE a.step <> b.step OR a.seq <> b.seq OR a.position <> b.position)
                FROM (SELECT step, seq, position, loss FROM read_parquet({lists['a']})) AS a
                POSITIONAL JOIN (SELECT step, seq, position, loss FROM read_parquet({lists['b']})) AS b"""
        ).fetchall()
    report(f"DuckDB POSITIONAL JOIN, segment {segment}", clock, seg_rows, args.threads)
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000, help="tokens per synthetic run (default 100M)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64, help="sequences per step")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="pyarrow and DuckDB threads")
    parser.add_argument("--links", type=int, default=None,
                        help="also pair runs made of this many hard-linked copies of every part "
                             "(default: enough for 500M rows; 0: skip)")
    parser.add_argument("--no-duckdb", action="store_true", help="skip the DuckDB comparisons")
    parser.add_argument("--keep", type=Path, default=None, help="write here and keep the files (else a temp folder)")
    parser.add_argument("--reuse", action="store_true", help="with --keep: pair existing runs, don't write")
    args = parser.parse_args()

    import pyarrow as pa

    pa.set_cpu_count(args.threads)
    home = args.keep or Path(tempfile.mkdtemp(prefix="bench_paired-"))
    print(f"# load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          f"(affinity {len(os.sched_getaffinity(0))}; other processes share them); pyarrow threads {args.threads}")
    try:
        if not args.reuse:
            write_pair(home, args)
        con = lossdb.connect(home)
        passing, tables, result = full_set(con)
        rows = result.rows
        print(f"# the positional join of analysis/paired.py (goal: <= {GOAL_S:.0f} s for 500M rows per run)")
        report("pair_runs: one pass, every grouping", passing, rows, args.threads)
        report_fixed("every table from the sums", tables)
        ids = paired.token_table(result, min_count=100, k=10)["token_id"].to_list()
        with Clock() as clock:
            paired.token_contexts(con, result, ids, per_token=2)
        report_fixed("example contexts (one segment, 20 ids)", clock)
        con.close()
        if not args.no_duckdb:
            print("# the same per-segment mean in DuckDB")
            duckdb_segment(home, args, rows, result.segments[-1])
        links = args.links if args.links is not None else max(2, round(GOAL_TOKENS / rows))
        if links > 1:
            linked = home / f"x{links}"
            link_copies(home, linked, links)
            print(f"# {links} hard-linked copies of every part of both runs: a real {links * rows:,}-row pass per run")
            con = lossdb.connect(linked)
            passing, tables, result = full_set(con)
            con.close()
            report("pair_runs: one pass, every grouping", passing, result.rows, args.threads)
            report_fixed("every table from the sums", tables)
            total, idle = passing.wall + tables.wall, (passing.cpu + tables.cpu) / args.threads
            verdict = "meets" if total <= GOAL_S * result.rows / GOAL_TOKENS else "misses"
            print(f"full set of paired curves, {result.rows:,} rows per run: {total:.1f} s wall, {idle:.1f} s "
                  f"CPU / {args.threads} ({verdict} the goal of {GOAL_S:.0f} s; a noise pair beside it doubles this)")
            shutil.rmtree(linked)
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)
    print(f"# load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
