"""The study's tables (analysis 6): per-run numbers and their mean ± std over seeds per config.

    window_loss          mean loss over a token window [start, end) per run (study: 400M-500M)
    word_start_ratio     word-start / sub-word mean loss over the last N tokens (study: last 10M)
    config_groups        which runs share a config once the seed is set aside
    summarize_by_config  mean and sample std of a per-run value over each config group
    config_differences   each run's resolved config keys that differ from the baseline's

Token windows are whole optimizer steps (a step's tokens are trained together): for
[start, end) a step belongs when the number of tokens trained before it lies in the window (the
rule that assigns steps to segments); "the last N tokens" are the steps holding any of them.
So a window holds up to a step's tokens more or fewer than its nominal size.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import polars as pl

from analysis.curves import check_runs

# Config keys that do not change what a run learns, set aside (with the seed) when grouping
# runs into configs: where it ran, how often it logged or saved, and how losses were recorded.
# A key matches itself and everything under it ("lossdb" matches "lossdb.segment_tokens").
NOT_PART_OF_CONFIG = (
    "train.seed",
    "train.device",
    "train.compile",
    "train.micro_batch_size",  # gradient accumulation: same update, different memory use
    "train.checkpoint_every",
    "train.log_every",
    "lossdb",
)


# --- mean loss over a token window ---------------------------------------------------------------


def window_loss(con, runs: Sequence[str], start_tokens: int, end_tokens: int) -> pl.DataFrame:
    """Mean loss per run over the steps whose first token index lies in [start_tokens, end_tokens).

    Columns: run, mean_loss (token-weighted: total loss / tokens), n_tokens, first_token
    (tokens trained before the window's first step), end_token (tokens trained after its
    last). A run that never reached the window has n_tokens 0 and mean_loss null.
    From the `learning_curve` view: step n = tokens - previous step's tokens.
    """
    if not 0 <= start_tokens < end_tokens:
        raise ValueError(f"window_loss: need 0 <= start_tokens < end_tokens, got [{start_tokens}, {end_tokens})")
    runs = check_runs(con, runs)
    found = con.sql(
        """WITH steps AS (
                SELECT run, tokens, mean_loss,
                       tokens - lag(tokens, 1, 0) OVER (PARTITION BY run ORDER BY tokens) AS n
                FROM learning_curve WHERE list_contains($runs, run))
            SELECT run, sum(mean_loss * n) / sum(n) AS mean_loss, CAST(sum(n) AS BIGINT) AS n_tokens,
                   min(tokens - n) AS first_token, max(tokens) AS end_token
            FROM steps
            WHERE tokens - n >= $start AND tokens - n < $end
            GROUP BY run""",
        params={"runs": runs, "start": start_tokens, "end": end_tokens},
    ).pl()
    every_run = pl.DataFrame({"run": runs})
    return every_run.join(found, on="run", how="left").with_columns(pl.col("n_tokens").fill_null(0))


# --- word-start / sub-word loss ratio --------------------------------------------------------------


def word_start_ratio(con, runs: Sequence[str], last_tokens: int) -> pl.DataFrame:
    """Word-start / sub-word loss ratio over each run's last `last_tokens` tokens.

    The window is every step holding any of the last `last_tokens` tokens (so at least the last
    step, however small `last_tokens` is): the steps that end after tokens trained - last_tokens.
    word_start_loss is the mean loss of targets whose token starts a word (vocab.is_word_start
    of the run's data set), subword_loss that of the others; ratio = word_start_loss /
    subword_loss. Tokens missing from the vocabulary count in neither.

    Columns: run, word_start_loss, subword_loss, ratio, n_word_start, n_subword, first_token.
    The step window comes from the per-step sums (rollups); the split needs the raw table joined
    with `vocab`, restricted to the window's steps, one run at a time.
    """
    if last_tokens <= 0:
        raise ValueError(f"word_start_ratio: last_tokens must be positive, got {last_tokens}")
    runs = check_runs(con, runs)
    rows = []
    for run in runs:
        first_step, first_token = con.sql(
            """WITH per_step AS (SELECT step, sum(n) AS n FROM _step_sums WHERE run = $run GROUP BY step),
                    cum AS (SELECT step, n, sum(n) OVER (ORDER BY step ROWS UNBOUNDED PRECEDING) AS after,
                                   sum(n) OVER () AS total
                            FROM per_step)
               SELECT min(step), CAST(min(after - n) AS BIGINT) FROM cum WHERE after > total - $last""",
            params={"run": run, "last": last_tokens},
        ).fetchall()[0]
        split = dict.fromkeys((True, False), (None, 0))
        if first_step is not None:
            # `run = $run` and `step >= $first_step` are constants: DuckDB prunes partitions and row groups
            for is_word_start, mean_loss, n in con.sql(
                """SELECT v.is_word_start, avg(CAST(l.loss AS DOUBLE)), count(*)
                   FROM losses AS l
                   JOIN runs AS r ON r.run = l.run
                   JOIN vocab AS v ON v.dataset = r.dataset AND v.token_id = l.token_id
                   WHERE l.run = $run AND l.step >= $first_step AND v.is_word_start IS NOT NULL
                   GROUP BY v.is_word_start""",
                params={"run": run, "first_step": first_step},
            ).fetchall():
                split[is_word_start] = (mean_loss, n)
        (ws_loss, n_ws), (sw_loss, n_sw) = split[True], split[False]
        ratio = ws_loss / sw_loss if ws_loss is not None and sw_loss else None
        rows.append((run, ws_loss, sw_loss, ratio, n_ws, n_sw, first_token))
    return pl.DataFrame(
        rows,
        schema={
            "run": pl.String,
            "word_start_loss": pl.Float64,
            "subword_loss": pl.Float64,
            "ratio": pl.Float64,
            "n_word_start": pl.Int64,
            "n_subword": pl.Int64,
            "first_token": pl.Int64,
        },
        orient="row",
    )


# --- configs ---------------------------------------------------------------------------------------


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_layer": 12}} → {"model.n_layer": 12}; lists and lists of tables stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def run_configs(con, runs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each run's resolved config from run.json, flattened to dotted keys."""
    runs = check_runs(con, runs)
    found = dict(
        con.sql("SELECT run, CAST(config AS VARCHAR) FROM runs WHERE list_contains($runs, run)", params={"runs": runs}).fetchall()
    )
    return {run: flatten(json.loads(found[run]) if found.get(run) else {}) for run in runs}


def _is_set_aside(key: str) -> bool:
    return any(key == skip or key.startswith(skip + ".") for skip in NOT_PART_OF_CONFIG)


def _show(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value, sort_keys=True)


def differences(config: dict[str, Any], reference: dict[str, Any], keys=None) -> dict[str, tuple[Any, Any]]:
    """{key: (reference value, value)} for every key whose values differ (absent = None)."""
    keys = sorted(set(config) | set(reference)) if keys is None else keys
    return {k: (reference.get(k), config.get(k)) for k in keys if config.get(k) != reference.get(k)}


def config_groups(con, runs: Sequence[str], reference: str | None = None) -> pl.DataFrame:
    """Assign runs to config groups: runs whose configs agree once NOT_PART_OF_CONFIG (the seed,
    device, logging and recording settings) is set aside form one group.

    The group is named by its differences from the `reference` run's config (default: the first
    run), e.g. "model.shift=[384, 384]"; the reference's own group is "<reference> config".
    Columns: run, seed, group.
    """
    runs = check_runs(con, runs)
    reference = reference or runs[0]
    configs = run_configs(con, [*runs, reference])
    kept = {run: {k: v for k, v in cfg.items() if not _is_set_aside(k)} for run, cfg in configs.items()}
    seeds = dict(con.sql("SELECT run, seed FROM runs WHERE list_contains($runs, run)", params={"runs": runs}).fetchall())
    rows = []
    for run in runs:
        diff = differences(kept[run], kept[reference])
        name = ", ".join(f"{k}={_show(v)}" for k, (_, v) in diff.items()) or f"{reference} config"
        rows.append((run, seeds.get(run), name))
    return pl.DataFrame(rows, schema={"run": pl.String, "seed": pl.Int64, "group": pl.String}, orient="row")


def summarize_by_config(per_run: pl.DataFrame, groups: pl.DataFrame, value: str) -> pl.DataFrame:
    """Mean and sample standard deviation (ddof=1) of `value` over the runs of each config group.

    `per_run` has columns run and `value`; `groups` is config_groups(...). Runs whose value is
    null (e.g. they never reached the window) are left out. std is null for a single-run group.
    Columns: group, n_runs, runs, mean, std (groups in first-appearance order).
    """
    joined = groups.join(per_run.select("run", value), on="run", how="left").filter(pl.col(value).is_not_null())
    return (
        joined.group_by("group", maintain_order=True)
        .agg(
            pl.len().alias("n_runs"),
            pl.col("run").str.join(", ").alias("runs"),
            pl.col(value).mean().alias("mean"),
            pl.col(value).std(ddof=1).alias("std"),
        )
        .with_columns(pl.col("n_runs").cast(pl.Int64))
    )


def config_differences(con, runs: Sequence[str], baseline: str) -> pl.DataFrame:
    """Every resolved-config key where a run differs from the baseline (seed included).

    Columns: run, key, baseline_value, value (JSON text; "(absent)" where a config lacks the key).
    The baseline itself is not listed.
    """
    runs = check_runs(con, runs)
    configs = run_configs(con, [baseline, *runs])
    rows = [
        (run, key, _show(base_value), _show(value))
        for run in runs
        if run != baseline
        for key, (base_value, value) in differences(configs[run], configs[baseline]).items()
    ]
    return pl.DataFrame(
        rows, schema={"run": pl.String, "key": pl.String, "baseline_value": pl.String, "value": pl.String}, orient="row"
    )
