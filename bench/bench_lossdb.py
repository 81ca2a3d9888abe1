"""Speed of the loss table: writing, bytes per token, raw-table and rollup curve queries.

    .venv/bin/python bench/bench_lossdb.py                  # 100M rows, DuckDB on 2 threads
    .venv/bin/python bench/bench_lossdb.py --rows 20000000  # a quicker look

Writes a synthetic run (lossdb.synthetic, through LossWriter) into a temp folder, times the
queries, prints the figures and deletes the folder (unless --keep DIR). Goals (issue 5):
raw-table position curve of a 500M-token run <= 10 s on 2 cores, every standard curve from
rollups <= 0.5 s. The 500M figure is given twice: extrapolated linearly from --rows, and
measured on a run made of hard links to the same part files (a real 500M-row scan of repeated
rows, so no extra disk). Wall times count whatever else runs on the machine; CPU seconds divided
by the thread count estimate the wall time on idle cores. Files are in the page cache (just
written), so disk reads are not measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lossdb  # noqa: E402
from lossdb.synthetic import SyntheticDataset, SyntheticRun, make_dataset, write_run  # noqa: E402

RUN = "bench"
GOAL_TOKENS = 500_000_000


def timed(con, sql: str, repeats: int) -> tuple[float, float, int]:
    """(median wall seconds, median CPU seconds of this process, result rows) of `sql`."""
    walls, cpus, n_rows = [], [], 0
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        n_rows = len(con.sql(sql).fetchall())
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), n_rows


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000, help="tokens in the synthetic run (default 100M)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64, help="sequences per step")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads for the queries")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--links", type=int, default=None,
                        help="also query a run made of this many hard-linked copies of every part "
                             "(default: enough for 500M rows; 0: skip)")
    parser.add_argument("--keep", type=Path, default=None, help="write here and keep the files (else a temp folder)")
    parser.add_argument("--reuse", action="store_true", help="with --keep: query an existing table, don't write")
    args = parser.parse_args()

    home = args.keep or Path(tempfile.mkdtemp(prefix="bench_lossdb-"))
    print(f"# load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes share them)")
    try:
        if not args.reuse:
            write_table(home, args)
        rows = query(home, args, raw_queries=("position_curve", "learning_curve", "bucket_curve"))
        links = args.links if args.links is not None else max(2, round(GOAL_TOKENS / rows))
        if links > 1:
            linked = home / f"x{links}"
            link_copies(home, linked, links)
            print(f"\n# {links} hard-linked copies of every part file (and rollup) under new names: "
                  f"a real {links * rows:,}-row scan, rows repeated")
            query(linked, args, raw_queries=("position_curve",))
            shutil.rmtree(linked)
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)
    print(f"# load average {os.getloadavg()[0]:.1f}")


def link_copies(home: Path, out: Path, copies: int) -> None:
    """A workspace whose run holds `copies` hard links of each part, named part-<rank>-<first_step><k>."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(home / "data", out / "data")
    shutil.copytree(home / "runs", out / "runs")
    for path in (home / "lossdb").rglob("part-*.parquet"):
        target_dir = out / path.parent.relative_to(home)
        target_dir.mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            os.link(path, target_dir / f"{path.stem}{k}.parquet")


def write_table(home: Path, args) -> None:
    n_seq = -(-args.rows // args.seq_len)
    steps = n_seq // args.batch
    tokens = steps * args.batch * args.seq_len
    print(f"# writing {tokens:,} rows: {steps} steps x {args.batch} x {args.seq_len}, vocab {args.vocab:,} -> {home}")
    started = time.perf_counter()
    dataset = make_dataset(
        home,
        SyntheticDataset(
            name="bench", n_sequences=n_seq, seq_len=args.seq_len, vocab_size=args.vocab,
            bucket_tokens=tokens // 25,  # ~27 buckets, like the study's 20M of 500M
        ),
    )
    print(f"data set generated in {time.perf_counter() - started:.1f} s")
    spec = SyntheticRun(RUN, dataset="bench", steps=steps, batch_size=args.batch,
                        segment_tokens=-(-tokens // args.segments))
    started = time.perf_counter()
    _, _, (stats,) = write_run(home, spec, dataset, keep_rows=False)
    wall = time.perf_counter() - started
    print(f"generate + write: {wall:.1f} s wall ({tokens / wall / 1e6:.2f}M rows/s); writer thread busy "
          f"{stats.busy_s:.1f} s ({stats.rows / stats.busy_s / 1e6:.2f}M rows/s, {stats.parts} parts, rollups "
          f"included); write() blocked {stats.blocked_s:.1f} s (the generator outruns the writer)")


def query(home: Path, args, raw_queries: tuple[str, ...]) -> int:
    losses = home / "lossdb" / "losses"
    rollups = home / "lossdb" / "rollups"
    con = lossdb.connect(home)
    con.execute(f"SET threads = {args.threads}")
    rows = con.sql("SELECT count(*) FROM losses").fetchall()[0][0]
    raw_bytes, rollup_bytes = folder_bytes(losses), folder_bytes(rollups)
    print(f"on disk: {raw_bytes / rows:.3f} bytes/token raw ({raw_bytes / 1e6:.0f} MB for {rows:,} rows), "
          f"rollups {rollup_bytes / 1e6:.1f} MB")
    per_column = con.sql(
        f"SELECT path_in_schema, sum(total_compressed_size) FROM parquet_metadata('{losses}/run=*/segment=*/part-*.parquet') "
        "GROUP BY ALL ORDER BY 1"
    ).fetchall()
    print("bytes/token by column: " + ", ".join(f"{name} {size / rows:.3f}" for name, size in per_column))

    print(f"# from rollups ({rows:,} rows; DuckDB threads={args.threads}, median of {args.repeats}; goal <= 0.5 s)")
    print(f"{'':26s} {'wall':>8s} {'CPU':>8s}")
    for name, sql in [
        ("position_curve", "SELECT * FROM position_curve"),
        ("bucket_curve", "SELECT * FROM bucket_curve"),
        ("learning_curve", "SELECT * FROM learning_curve"),
        ("relative_position_curve", f"SELECT * FROM relative_position_curve('{RUN}')"),
        ("relative_bucket_curve", f"SELECT * FROM relative_bucket_curve('{RUN}')"),
        ("relative_learning_curve", f"SELECT * FROM relative_learning_curve('{RUN}')"),
    ]:
        wall, cpu, n = timed(con, sql, args.repeats)
        print(f"{name:26s} {wall:7.3f}s {cpu:7.3f}s  ({n} rows)")
    con.close()

    # The same views with the rollups hidden: the raw-table fallback.
    hidden = home / "lossdb" / "rollups.hidden"
    rollups.rename(hidden)
    try:
        con = lossdb.connect(home)
        con.execute(f"SET threads = {args.threads}")
        print(f"# from the raw table ({rows:,} rows; goal for the position curve at 500M rows <= 10 s). "
              f"'idle' = CPU s / {args.threads} threads, the wall time on {args.threads} idle cores")
        for name in raw_queries:
            repeats = 1 if name == "bucket_curve" else min(args.repeats, 2)
            wall, cpu, n = timed(con, f"SELECT * FROM {name}", repeats)
            scale = GOAL_TOKENS / rows
            print(f"{name:26s} {wall:7.2f}s wall {cpu:7.2f}s CPU ({n} rows); x{scale:.2f} for 500M rows: "
                  f"{wall * scale:5.1f} s wall, {cpu * scale / args.threads:5.1f} s idle")
        con.close()
    finally:
        hidden.rename(rollups)
    return rows


if __name__ == "__main__":
    main()
