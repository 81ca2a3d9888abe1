"""`python cli.py compare`: a suite's runs in one table, plus their learning curves.

    compare(con, entries, windows, last_tokens, reference) -> Comparison
    to_markdown(comparison) / comparison.table.write_csv(...)
    learning_chart_by_label(con, entries, smooth_tokens, start_tokens)

An entry is one run with its label (the suite's variation; seeds of one label share it) and
its differences from the suite's base config. The table has a row per run and, for a label with
several runs, a row with their mean ± sample std (ddof=1): mean loss over each token window,
word-start / sub-word loss ratio over the last tokens, and the label's mean minus the
reference label's. The numbers come from `analysis.tables` (window_loss, word_start_ratio)
and the `runs` view; nothing here reads the loss table itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import altair as alt
import polars as pl

from analysis import charts, curves, tables
from analysis.report import ReportWindows, trained_tokens


@dataclass(frozen=True)
class Entry:
    label: str
    run: str
    differs: str  # e.g. 'model.shift=[48, 48]'; "" for the base config itself


@dataclass(frozen=True)
class Comparison:
    table: pl.DataFrame  # kind = "run" (one per run) | "mean" (one per label with several runs)
    windows: list[tuple[int, int]]
    last_tokens: int
    reference: str | None
    missing: list[str]  # entries with no recorded losses (not run yet), left out of the table
    unmatched_reference: str | None  # a reference asked for that has no recorded runs
    fewest_tokens: int  # the fewest tokens any compared run has recorded


def window_column(start: int, end: int) -> str:
    return f"loss_{start}_{end}"


def compare(
    con,
    entries: Sequence[Entry],
    windows: Sequence[tuple[int, int]] | None = None,
    last_tokens: int | None = None,
    reference: str | None = None,
) -> Comparison:
    """The comparison table of `entries` (runs absent from the workspace or without losses are
    listed in `missing`). Default windows follow the study's proportions for the fewest tokens any
    run trained (its 400M-500M of 500M: the last fifth; its last 10M: the last fiftieth).
    `reference` is the label Δ is measured against (default: the first label whose runs differ
    from nothing, i.e. the base config, if any).
    """
    known = set(curves.known_runs(con))
    present = [e for e in entries if e.run in known]
    tokens = trained_tokens(con, [e.run for e in present]) if present else {}
    kept = [e for e in present if tokens.get(e.run, 0) > 0]
    missing = [e.run for e in entries if e not in kept]
    if not kept:
        raise ValueError("none of these runs has recorded losses yet: " + ", ".join(e.run for e in entries))
    fewest = min(tokens[e.run] for e in kept)
    study = ReportWindows.study_like(fewest)
    windows = list(windows) if windows else [(study.window_start, study.window_end)]
    last_tokens = last_tokens or study.last_tokens
    labels = list(dict.fromkeys(e.label for e in kept))
    unmatched = None
    if reference is None:
        reference = next((e.label for e in kept if not e.differs), None)
    elif reference not in labels:
        # a run's name stands for its label (compare --runs labels groups by their first run)
        reference = next((e.label for e in kept if e.run == reference), None) or reference
        if reference not in labels:
            unmatched, reference = reference, None  # not run yet: no Δ column, and a note says why

    runs = [e.run for e in kept]
    info = con.sql(
        """SELECT run, seed, status, n_params, n_params_non_embedding, tokens_trained
           FROM runs WHERE list_contains($runs, run)""",
        params={"runs": runs},
    ).pl()
    per_run = pl.DataFrame({"run": runs, "label": [e.label for e in kept], "differs": [e.differs for e in kept]})
    per_run = per_run.join(info, on="run", how="left")
    value_columns = []
    for start, end in windows:
        col = window_column(start, end)
        loss = tables.window_loss(con, runs, start, end).select("run", pl.col("mean_loss").alias(col))
        per_run = per_run.join(loss, on="run", how="left")
        value_columns.append(col)
    ratio = tables.word_start_ratio(con, runs, last_tokens).select("run", "ratio")
    per_run = per_run.join(ratio, on="run", how="left")
    value_columns.append("ratio")

    rows = []
    means: dict[str, dict[str, float | None]] = {}
    for label in labels:
        group = per_run.filter(pl.col("label") == label)
        stats = {c: _mean_std(group[c]) for c in value_columns}
        means[label] = {c: m for c, (m, _) in stats.items()}
        for r in group.iter_rows(named=True):
            rows.append({"kind": "run", "n_runs": 1, **r, **{f"{c}_std": None for c in value_columns}})
        if group.height > 1:
            first = group.row(0, named=True)
            rows.append({
                "kind": "mean", "n_runs": group.height, "run": None, "label": label, "differs": first["differs"],
                "seed": None, "status": None, "n_params": first["n_params"],
                "n_params_non_embedding": first["n_params_non_embedding"],
                "tokens_trained": int(group["tokens_trained"].mean()) if group["tokens_trained"].null_count() == 0 else None,
                **{c: stats[c][0] for c in value_columns}, **{f"{c}_std": stats[c][1] for c in value_columns},
            })
    table = pl.DataFrame(rows, schema={
        "kind": pl.String, "label": pl.String, "run": pl.String, "n_runs": pl.Int64, "seed": pl.Int64,
        "status": pl.String, "differs": pl.String, "n_params": pl.Int64, "n_params_non_embedding": pl.Int64,
        "tokens_trained": pl.Int64, **{name: pl.Float64 for c in value_columns for name in (c, f"{c}_std")},
    })
    if reference is not None:
        # Δ: the label's mean (over its seeds) minus the reference label's, per window
        for start, end in windows:
            col = window_column(start, end)
            ref = means[reference][col]
            table = table.with_columns(
                pl.col("label").replace_strict({k: (v[col] - ref if v[col] is not None and ref is not None else None)
                                                for k, v in means.items()}, return_dtype=pl.Float64)
                .alias(f"delta_{col}")
            )
        ordered = []  # each window's Δ right after its mean and std
        for name in table.columns:
            if not name.startswith("delta_"):
                ordered.append(name)
                if name.endswith("_std") and f"delta_{name[:-4]}" in table.columns:
                    ordered.append(f"delta_{name[:-4]}")
        table = table.select(ordered)
    return Comparison(table=table, windows=windows, last_tokens=last_tokens, reference=reference, missing=missing,
                      unmatched_reference=unmatched, fewest_tokens=fewest)


def _mean_std(values: pl.Series) -> tuple[float | None, float | None]:
    found = values.drop_nulls()
    if found.len() == 0:
        return None, None
    return float(found.mean()), (float(found.std(ddof=1)) if found.len() > 1 else None)


def entries_for_runs(con, runs: Sequence[str]) -> list[Entry]:
    """`compare --runs`: runs grouped by config (seed set aside, tables.config_groups); each group
    labelled by its first run, its differences from the first run's config."""
    groups = tables.config_groups(con, runs)
    reference_group = groups["group"][0]
    first_of: dict[str, str] = {}
    entries = []
    for run, _, group in groups.iter_rows():
        first_of.setdefault(group, run)
        entries.append(Entry(label=first_of[group], run=run, differs="" if group == reference_group else group))
    return entries


# --- rendering -----------------------------------------------------------------------------------


def short_tokens(n: int) -> str:
    """300000 -> 300K, 1500000 -> 1.5M (exact values only; else with separators)."""
    for size, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= size and (n * 10) % size == 0:
            value = n / size
            return f"{value:g}{suffix}"
    return f"{n:,}"


def to_markdown(c: Comparison, title: str | None = None, base: str = "the base config") -> str:
    """The table as GitHub markdown: a row per run, then `mean ± std of n` for labels with several runs.

    `base` names what the differences are from (the suite's base config, or the first run)."""
    reference = c.reference
    header = ["label", "run", "seed", f"differs from {base}", "params", "non-emb.", "tokens"]
    for start, end in c.windows:
        header.append(f"loss {short_tokens(start)}–{short_tokens(end)}")
        if reference is not None:
            header.append(f"Δ vs {reference}")
    header.append(f"word-start / sub-word, last {short_tokens(c.last_tokens)}")
    lines = []
    if title:
        lines += [f"# {title}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(header) - 4)) + "|"]
    multi = {row["label"] for row in c.table.iter_rows(named=True) if row["kind"] == "mean"}
    for row in c.table.iter_rows(named=True):
        is_mean = row["kind"] == "mean"
        single = row["label"] not in multi  # its one run stands for the label: show Δ there
        cells = [
            f"**{row['label']}**" if is_mean else row["label"],
            f"mean ± std of {row['n_runs']}" if is_mean else row["run"],
            "" if row["seed"] is None else str(row["seed"]),
            row["differs"] or "-",
            _int(row["n_params"]), _int(row["n_params_non_embedding"]), _int(row["tokens_trained"]),
        ]
        for start, end in c.windows:
            col = window_column(start, end)
            cells.append(_value(row[col], row[f"{col}_std"], bold=is_mean))
            if reference is not None:
                delta = row.get(f"delta_{col}")
                cells.append(f"{delta:+.4f}" if (is_mean or single) and delta is not None else "")
        cells.append(_value(row["ratio"], row["ratio_std"], bold=is_mean))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Loss: token-weighted mean over the steps whose first token lies in each window; "
             f"word-start / sub-word: mean loss of word-start targets over that of the others, last "
             f"{c.last_tokens:,} tokens; std: sample std over seeds."]
    if reference is not None:
        notes.append(f"Δ: the label's mean minus {reference}'s (negative = lower loss).")
    if c.unmatched_reference is not None:
        notes.append(f"No Δ column: the reference {c.unmatched_reference} has no recorded runs.")
    if c.missing:
        shown = ", ".join(c.missing[:4]) + (f" and {len(c.missing) - 4} more" if len(c.missing) > 4 else "")
        notes.append(f"Not run yet, left out ({len(c.missing)}): {shown}.")
    return "\n".join(lines + [""] + notes) + "\n"


def _int(value) -> str:
    return "" if value is None else f"{value:,}"


def _value(mean, std, bold: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
    return f"**{text}**" if bold else text


# --- the chart -----------------------------------------------------------------------------------


def learning_chart_by_label(con, entries: Sequence[Entry], smooth_tokens: int, start_tokens: int = 0,
                            title: str = "Learning curves", reference: str | None = None,
                            max_points: int = 1000):
    """Smoothed loss vs tokens, one line per label: the mean over its runs (`curves.learning_curves`).

    With a `reference` label, a second panel below shows each label's curve minus the
    reference's, step by step: the labels' curves lie within a few hundredths of a nat of each
    other on a scale of several nats, and the difference is what the study compares. Only points
    every run of a label reached are kept, so an unfinished seed does not bend a line's end.
    """
    label_of = {e.run: e.label for e in entries}
    order = list(dict.fromkeys(e.label for e in entries))
    n_runs = {label: sum(1 for e in entries if e.label == label) for label in order}
    df = curves.learning_curves(con, list(label_of), smooth_tokens, start_tokens)
    by_label = (
        df.with_columns(pl.col("run").replace_strict(label_of).alias("label"))
        .group_by("label", "tokens")
        .agg(pl.col("smoothed_loss").mean(), pl.col("mean_loss").mean(), pl.len().alias("n"))
        .filter(pl.col("n") == pl.col("label").replace_strict(n_runs, return_dtype=pl.UInt32))
        .with_columns(pl.col("label").replace_strict({l: i for i, l in enumerate(order)}).alias("_order"))
        .sort("_order", "tokens")
        .select(pl.col("label").alias("run"), "tokens", "mean_loss", "smoothed_loss")
    )
    color = alt.Color("run:N", title="label", sort=order, scale=alt.Scale(domain=order))
    curves_chart = charts.learning_chart(by_label, max_points).encode(color=color)  # "run" holds labels here
    if reference is None or reference not in order or len(order) < 2:
        return curves_chart.properties(title=title)

    ref = by_label.filter(pl.col("run") == reference).select("tokens", pl.col("smoothed_loss").alias("ref"))
    diff = (
        by_label.filter(pl.col("run") != reference)
        .join(ref, on="tokens", how="inner")  # the same steps: runs of one suite share batch and data
        .with_columns((pl.col("smoothed_loss") - pl.col("ref")).alias("difference"))
        .with_columns(pl.int_range(pl.len()).over("run").alias("_i"), pl.len().over("run").alias("_n"))
        .filter(pl.col("_i") % ((pl.col("_n") + max_points - 1) // max_points) == 0)
    )
    line = alt.Chart(charts.chart_data(diff, ["run", "tokens", "difference"])).mark_line().encode(
        x=alt.X("tokens:Q", title="tokens seen", axis=alt.Axis(format="~s")),
        y=alt.Y("difference:Q", title=f"loss − {reference}'s (smoothed, nats)"),
        color=color,
        tooltip=["run:N", alt.Tooltip("tokens:Q", format=","), alt.Tooltip("difference:Q", format="+.4f")],
    )
    zero = alt.Chart(pl.DataFrame({"y": [0.0]})).mark_rule(color="#888", strokeDash=[4, 4]).encode(y="y:Q")
    difference_chart = alt.layer(zero, line).properties(
        width=charts.WIDTH, height=charts.HEIGHT * 2 // 3, title=f"Difference from {reference} (below 0: lower loss)")
    return alt.vconcat(curves_chart, difference_chart).properties(title=title)
