"""The study's curves as DuckDB queries over the lossdb views, one function per analysis.

Each function is `(con, runs, ...) -> polars.DataFrame`, where `con` comes from
`lossdb.connect(home)` and `runs` names runs in the `runs` view. All aggregation happens in
DuckDB; what comes back is one row per curve point (at most runs x segments x positions).

    1. position_curve     mean loss by context position, per segment       (study Fig. 1)
    2. bucket_curve       mean loss by vocabulary bucket, per segment      (study Fig. 3)
    3. relative_curve     either curve as ratio and difference to a baseline run, per segment
    4. first_positions    first positions' loss normalized to [0, 1] + word-start share (Fig. 2)
    5. learning_curves    loss vs tokens seen, smoothed over a token window (Figs. 4-9)

The SQL behind each is described in docs/analysis.md.
"""

from __future__ import annotations

from typing import Sequence

import polars as pl


class UnknownRunError(ValueError):
    """A run name that the workspace does not have (the message lists the known runs)."""


# --- helpers -----------------------------------------------------------------------------------


def known_runs(con) -> list[str]:
    """Runs that have a run.json (the `runs` view), sorted."""
    return [row[0] for row in con.sql("SELECT run FROM runs WHERE run IS NOT NULL ORDER BY run").fetchall()]


def check_runs(con, runs: Sequence[str] | str) -> list[str]:
    """`runs` as a list (a comma-separated string is split), each checked against the workspace.

    Raises UnknownRunError with a one-line message listing the known runs.
    """
    if isinstance(runs, str):
        runs = [r.strip() for r in runs.split(",") if r.strip()]
    runs = list(dict.fromkeys(runs))  # keep order, drop repeats
    if not runs:
        raise UnknownRunError("no runs given")
    known = known_runs(con)
    unknown = [r for r in runs if r not in known]
    if unknown:
        listing = ", ".join(known) if known else "(none: no runs/*/run.json in this workspace)"
        raise UnknownRunError(f"unknown run(s): {', '.join(unknown)}; known runs: {listing}")
    return runs


def _segment_filter(segments: Sequence[int] | None, column: str = "segment") -> tuple[str, dict]:
    """A ` AND ...` clause keeping only `segments` (nothing when None), and its parameters."""
    if segments is None:
        return "", {}
    return f" AND list_contains($segments, {column})", {"segments": [int(s) for s in segments]}


def _query(con, sql: str, params: dict) -> pl.DataFrame:
    return con.sql(sql, params=params).pl()


# --- 1, 2: curves per segment ------------------------------------------------------------------


def position_curve(con, runs: Sequence[str], segments: Sequence[int] | None = None) -> pl.DataFrame:
    """Mean loss by context position, one curve per (run, segment) (study Fig. 1).

    Columns: run, segment, position, mean_loss, n (tokens averaged). `segments` keeps only
    those segment numbers (all when None). From the `position_curve` view (rollup-backed).
    """
    runs = check_runs(con, runs)
    seg_sql, seg_params = _segment_filter(segments)
    return _query(
        con,
        f"""SELECT run, segment, position, mean_loss, n FROM position_curve
            WHERE list_contains($runs, run){seg_sql}
            ORDER BY list_position($runs, run), segment, position""",
        {"runs": runs, **seg_params},
    )


def bucket_curve(con, runs: Sequence[str], segments: Sequence[int] | None = None) -> pl.DataFrame:
    """Mean loss by vocabulary bucket of the target (0 = most frequent), per (run, segment) (Fig. 3).

    Columns: run, segment, bucket, mean_loss, n. Tokens that no vocabulary places (bucket NULL
    in the `bucket_curve` view: no vocab.parquet for the run's data set) are left out.
    """
    runs = check_runs(con, runs)
    seg_sql, seg_params = _segment_filter(segments)
    return _query(
        con,
        f"""SELECT run, segment, bucket, mean_loss, n FROM bucket_curve
            WHERE list_contains($runs, run) AND bucket IS NOT NULL{seg_sql}
            ORDER BY list_position($runs, run), segment, bucket""",
        {"runs": runs, **seg_params},
    )


# --- 3: relative to a baseline -----------------------------------------------------------------

RELATIVE_MACROS = {"position": "relative_position_curve", "bucket": "relative_bucket_curve"}


def relative_curve(
    con, runs: Sequence[str], baseline: str, by: str = "position", segments: Sequence[int] | None = None
) -> pl.DataFrame:
    """A run's position or bucket curve relative to the baseline run's, segment by segment.

    Columns: run, baseline, segment, <by> (position or bucket), mean_loss, baseline_loss,
    ratio = mean_loss / baseline_loss, difference = mean_loss - baseline_loss.
    Segment k of a run is compared with segment k of the baseline (the same tokens-seen range
    when both use the same segment_tokens); points the baseline lacks are left out. The
    baseline itself is left out too (its ratio is 1 everywhere) unless it is the only run.
    From the lossdb macros relative_position_curve / relative_bucket_curve.
    """
    if by not in RELATIVE_MACROS:
        raise ValueError(f"relative_curve: by must be one of {sorted(RELATIVE_MACROS)}, got {by!r}")
    runs = check_runs(con, runs)
    check_runs(con, [baseline])
    shown = [r for r in runs if r != baseline] or [baseline]
    seg_sql, seg_params = _segment_filter(segments)
    return _query(
        con,
        f"""SELECT run, $baseline AS baseline, segment, x AS {by}, mean_loss, baseline_loss, ratio, difference
            FROM {RELATIVE_MACROS[by]}($baseline)
            WHERE list_contains($runs, run) AND x IS NOT NULL{seg_sql}
            ORDER BY list_position($runs, run), segment, x""",
        {"runs": shown, "baseline": baseline, **seg_params},
    )


# --- 4: first positions ------------------------------------------------------------------------


def first_positions(
    con, runs: Sequence[str], n_positions: int = 30, segments: Sequence[int] | None = None
) -> pl.DataFrame:
    """The first `n_positions` positions: min-max normalized loss beside the word-start share.

    Per run, the mean loss at each position 0..n_positions-1 is pooled over the chosen segments
    (all when None); `normalized_loss = (mean_loss - min) / (max - min)`, where min and max are
    taken per run over those first `n_positions` positions only (so each run spans exactly
    [0, 1] and runs with different overall loss levels can be compared by shape).
    `word_start_share` is the share of targets at that position whose token starts a word
    (vocab.is_word_start of the run's data set), counted over the same tokens.

    Columns: run, position, mean_loss, normalized_loss, word_start_share, n.
    Loss comes from `position_curve` (rollups); the share needs the raw table joined with
    `vocab` but only at positions < n_positions, one run at a time.
    """
    if n_positions < 2:
        raise ValueError(f"first_positions: n_positions must be at least 2, got {n_positions}")
    runs = check_runs(con, runs)
    seg_sql, seg_params = _segment_filter(segments)
    loss = _query(
        con,
        f"""WITH pooled AS (
                SELECT run, position, sum(mean_loss * n) / sum(n) AS mean_loss, CAST(sum(n) AS BIGINT) AS n
                FROM position_curve
                WHERE list_contains($runs, run) AND position < $n_positions{seg_sql}
                GROUP BY run, position)
            SELECT run, position, mean_loss,
                   (mean_loss - min(mean_loss) OVER w) / nullif(max(mean_loss) OVER w - min(mean_loss) OVER w, 0)
                       AS normalized_loss,
                   n
            FROM pooled
            WINDOW w AS (PARTITION BY run)""",
        {"runs": runs, "n_positions": n_positions, **seg_params},
    )
    share_seg_sql, _ = _segment_filter(segments, column="l.segment")
    shares = []
    for run in runs:  # one run per query: `run = $run` prunes the hive partitions
        shares.append(
            _query(
                con,
                f"""SELECT l.run, l.position, avg(CAST(v.is_word_start AS DOUBLE)) AS word_start_share
                    FROM losses AS l
                    JOIN runs AS r ON r.run = l.run
                    JOIN vocab AS v ON v.dataset = r.dataset AND v.token_id = l.token_id
                    WHERE l.run = $run AND l.position < $n_positions{share_seg_sql}
                    GROUP BY l.run, l.position""",
                {"run": run, "n_positions": n_positions, **seg_params},
            )
        )
    share = pl.concat(shares) if shares else None
    out = loss.join(share, on=["run", "position"], how="left") if share is not None else loss
    order = {run: i for i, run in enumerate(runs)}
    return (
        out.with_columns(pl.col("run").replace_strict(order, return_dtype=pl.Int64).alias("_order"))
        .sort("_order", "position")
        .select("run", "position", "mean_loss", "normalized_loss", "word_start_share", "n")
    )


# --- 5: learning curves ------------------------------------------------------------------------


def learning_curves(
    con,
    runs: Sequence[str],
    window_tokens: int = 0,
    start_tokens: int = 0,
    end_tokens: int | None = None,
) -> pl.DataFrame:
    """Loss vs tokens seen, one point per optimizer step, smoothed over a token window.

    `tokens` is the number of tokens trained up to and including the step (the
    `learning_curve` view). `smoothed_loss` at t is the token-weighted mean loss of the steps
    whose `tokens` lie in (t - window_tokens, t] (a trailing window; a step's weight is its
    token count, so a short last step weighs less); window_tokens = 0 means no smoothing.
    Points with tokens < start_tokens (or > end_tokens) are dropped after smoothing, so the
    first kept point is still averaged over a full window.

    Columns: run, tokens, mean_loss, smoothed_loss.
    """
    if window_tokens < 0 or start_tokens < 0:
        raise ValueError(f"learning_curves: window_tokens and start_tokens must be >= 0, got {window_tokens}, {start_tokens}")
    runs = check_runs(con, runs)
    end = end_tokens if end_tokens is not None else 2**62
    return _query(
        con,
        """WITH steps AS (
                SELECT run, tokens, mean_loss,
                       tokens - lag(tokens, 1, 0) OVER (PARTITION BY run ORDER BY tokens) AS n
                FROM learning_curve WHERE list_contains($runs, run)),
            smoothed AS (
                SELECT run, tokens, mean_loss,
                       sum(mean_loss * n) OVER w / sum(n) OVER w AS smoothed_loss
                FROM steps
                WINDOW w AS (PARTITION BY run ORDER BY tokens
                             RANGE BETWEEN $reach PRECEDING AND CURRENT ROW))
            SELECT run, tokens, mean_loss, smoothed_loss FROM smoothed
            WHERE tokens >= $start AND tokens <= $end
            ORDER BY list_position($runs, run), tokens""",
        # (t - window, t] on integer token counts is [t - (window - 1), t]
        {"runs": runs, "reach": max(window_tokens - 1, 0), "start": start_tokens, "end": end},
    )
