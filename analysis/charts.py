"""Altair charts for the analyses in `analysis.curves` and `analysis.tables`.

Every function takes the (already aggregated) polars frame its analysis returns and gives back
an Altair chart; no chart ever carries raw loss rows. Altair's default data transformer refuses
more than 5,000 rows, a guard against raw data; but a position curve of 10 segments x 1,024
positions is 10,240 aggregated points, which is what the study plots. So importing this module
raises that limit to MAX_CHART_ROWS (only while the "default" transformer is active): still a
guard against raw rows, never hit by an aggregated curve. Frames go in as DataFrames, not as
`alt.Data(values=...)`, whose per-row schema validation takes seconds for 10K rows.

Segments are coloured with a quantitative red → blue scale (first segment red, last blue): the
`redblue` scheme is diverging and would paint middle segments white (DESIGN.md pitfalls).
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl

MAX_CHART_ROWS = 200_000  # ~20 runs x 10 segments x 1,024 positions
if alt.data_transformers.active == "default":
    alt.data_transformers.enable("default", max_rows=MAX_CHART_ROWS)

# vl-convert's name for the Vega-Lite version Altair writes specs for ("v6.4.1" -> "v6_4").
VL_VERSION = "_".join(alt.SCHEMA_VERSION.split(".")[:2])

SEGMENT_RANGE = ["#d62728", "#1f77b4"]  # first segment red, last segment blue
WIDTH, HEIGHT = 420, 260
# Readable ticks for a log-like position axis (symlog keeps position 0 on the axis).
LOG_TICKS = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000]


# --- helpers -----------------------------------------------------------------------------------


def chart_data(df: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Only `columns`, floats rounded to 6 significant digits and NaN → null.

    Rounding keeps the HTML small (losses are float16-precise anyway); NaN is not JSON.
    """
    floats = [c for c in columns if df.schema[c].is_float()]
    return df.select(columns).with_columns(pl.col(floats).fill_nan(None).round_sig_figs(6))


def segment_color() -> alt.Color:
    return alt.Color(
        "segment:Q",
        scale=alt.Scale(range=SEGMENT_RANGE),
        legend=alt.Legend(title="segment", format="d"),
    )


def position_x(log_x: bool, max_position: int | None) -> alt.X:
    """x = position; log_x uses a symlog scale (log(1 + position)), so position 0 stays."""
    if not log_x:
        return alt.X("position:Q", title="position (context length − 1)")
    ticks = [t for t in LOG_TICKS if max_position is None or t <= max_position]
    return alt.X(
        "position:Q",
        title="position (context length − 1), log scale",
        scale=alt.Scale(type="symlog"),
        axis=alt.Axis(values=ticks),
    )


def facet_by_run(chart: alt.Chart, df: pl.DataFrame) -> alt.Chart | alt.FacetChart:
    """One panel per run when the frame holds several runs; a single run stays unfaceted."""
    if df["run"].n_unique() <= 1:
        return chart
    order = df["run"].unique(maintain_order=True).to_list()  # panels in the order runs were given
    return chart.facet(facet=alt.Facet("run:N", title=None, sort=order), columns=2)


def _title(text: str, df: pl.DataFrame) -> str:
    runs = df["run"].unique(maintain_order=True).to_list() if "run" in df.columns else []
    return f"{text} — {runs[0]}" if len(runs) == 1 else text


# --- 1, 2, 3: curves per segment ---------------------------------------------------------------


def segment_curve_chart(
    df: pl.DataFrame, x: str, y: str = "mean_loss", log_x: bool = False, title: str = ""
) -> alt.Chart | alt.FacetChart:
    """Line per segment of `y` against `x` (`position` or `bucket`), red (first) → blue (last)."""
    y_titles = {
        "mean_loss": "mean loss (nats)",
        "ratio": "loss / baseline loss",
        "difference": "loss − baseline loss (nats)",
    }
    if x == "position":
        x_enc = position_x(log_x, int(df["position"].max()) if len(df) else None)
    else:
        x_enc = alt.X(f"{x}:Q", title="vocabulary bucket (most frequent first)", axis=alt.Axis(tickMinStep=1))
    columns = ["run", "segment", x, y]
    base = alt.Chart(chart_data(df, columns))
    lines = base.mark_line(strokeWidth=1.2).encode(
        x=x_enc,
        y=alt.Y(f"{y}:Q", title=y_titles.get(y, y), scale=alt.Scale(zero=False)),
        color=segment_color(),
        detail="segment:N",  # one line per segment, whatever the colour scale does
        tooltip=["run:N", "segment:Q", f"{x}:Q", alt.Tooltip(f"{y}:Q", format=".4f")],
    )
    chart: alt.Chart | alt.LayerChart = lines
    if y in ("ratio", "difference"):
        level = 1.0 if y == "ratio" else 0.0
        # aggregated to one row first: one rule per panel, not one per data point
        rule = base.transform_aggregate(points="count()").mark_rule(color="gray", strokeDash=[4, 3]).encode(
            y=alt.datum(level)
        )
        chart = alt.layer(lines, rule)
    chart = chart.properties(width=WIDTH, height=HEIGHT)
    return facet_by_run(chart, df).properties(title=_title(title, df))


def position_chart(df: pl.DataFrame, log_x: bool = False) -> alt.Chart | alt.FacetChart:
    """Analysis 1: mean loss vs position, one line per segment (`curves.position_curve`)."""
    return segment_curve_chart(df, "position", "mean_loss", log_x, "Loss vs context position, by training segment")


def bucket_chart(df: pl.DataFrame) -> alt.Chart | alt.FacetChart:
    """Analysis 2: mean loss vs vocabulary bucket, one line per segment (`curves.bucket_curve`)."""
    return segment_curve_chart(df, "bucket", "mean_loss", False, "Loss vs vocabulary bucket, by training segment")


def relative_chart(
    df: pl.DataFrame, by: str = "position", measure: str = "ratio", log_x: bool = False
) -> alt.Chart | alt.FacetChart:
    """Analysis 3: a curve relative to the baseline (`curves.relative_curve`): ratio or difference."""
    if measure not in ("ratio", "difference"):
        raise ValueError(f"measure must be 'ratio' or 'difference', got {measure!r}")
    baseline = df["baseline"][0] if len(df) else "baseline"
    what = "position" if by == "position" else "vocabulary bucket"
    return segment_curve_chart(df, by, measure, log_x, f"Loss {measure} to {baseline} by {what}")


# --- 4: first positions ------------------------------------------------------------------------


def first_positions_chart(df: pl.DataFrame) -> alt.VConcatChart:
    """Analysis 4: min-max normalized loss over the first positions, and the word-start share."""
    data = chart_data(df, ["run", "position", "normalized_loss", "word_start_share"])
    x = alt.X("position:Q", title="position", axis=alt.Axis(tickMinStep=1))
    color = alt.Color("run:N", title="run")
    loss = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("normalized_loss:Q", title="loss, min-max normalized per run"),
            color=color,
            tooltip=["run:N", "position:Q", alt.Tooltip("normalized_loss:Q", format=".3f")],
        )
        .properties(width=WIDTH, height=HEIGHT, title="First positions: normalized loss")
    )
    share = (
        alt.Chart(data)
        .mark_line(point=True, strokeDash=[4, 2])
        .encode(
            x=x,
            y=alt.Y("word_start_share:Q", title="share of word-start targets", scale=alt.Scale(domain=[0, 1])),
            color=color,
            tooltip=["run:N", "position:Q", alt.Tooltip("word_start_share:Q", format=".3f")],
        )
        .properties(width=WIDTH, height=HEIGHT // 2, title="Share of word-start targets")
    )
    return alt.vconcat(loss, share)


# --- 5: learning curves ------------------------------------------------------------------------


def learning_chart(df: pl.DataFrame, max_points_per_run: int = 1000) -> alt.Chart:
    """Analysis 5: smoothed loss vs tokens seen, one line per run (`curves.learning_curves`).

    Keeps at most `max_points_per_run` evenly spaced steps of each run: a long run has more
    steps than a screen has pixels, and the smoothing already spans many steps.
    """
    thinned = (
        df.with_columns(pl.int_range(pl.len()).over("run").alias("_i"), pl.len().over("run").alias("_n"))
        # every k-th step, k = ceil(n / max_points_per_run), and always the last one
        .filter(
            (pl.col("_i") % ((pl.col("_n") + max_points_per_run - 1) // max_points_per_run) == 0)
            | (pl.col("_i") == pl.col("_n") - 1)
        )
        .drop("_i", "_n")
    )
    return (
        alt.Chart(chart_data(thinned, ["run", "tokens", "smoothed_loss"]))
        .mark_line()
        .encode(
            x=alt.X("tokens:Q", title="tokens seen", axis=alt.Axis(format="~s")),
            y=alt.Y("smoothed_loss:Q", title="loss (smoothed, nats)", scale=alt.Scale(zero=False)),
            color=alt.Color("run:N", title="run"),
            tooltip=["run:N", alt.Tooltip("tokens:Q", format=","), alt.Tooltip("smoothed_loss:Q", format=".4f")],
        )
        .properties(width=WIDTH, height=HEIGHT, title="Learning curves")
    )


# --- 6: tables as charts -----------------------------------------------------------------------


def config_summary_chart(df: pl.DataFrame, value: str, title: str) -> alt.LayerChart:
    """Mean per config group with a ± sample-std bar where the group has several seeds.

    `df` is `tables.summarize_by_config(...)`: group, n_runs, mean, std.
    """
    data = df.with_columns(
        (pl.col("mean") - pl.col("std")).alias("low"), (pl.col("mean") + pl.col("std")).alias("high")
    )
    base = alt.Chart(chart_data(data, ["group", "n_runs", "mean", "std", "low", "high"])).encode(
        y=alt.Y("group:N", title=None, sort=None)
    )
    points = base.mark_point(filled=True, size=60).encode(
        x=alt.X("mean:Q", title=value, scale=alt.Scale(zero=False)),
        tooltip=["group:N", "n_runs:Q", alt.Tooltip("mean:Q", format=".4f"), alt.Tooltip("std:Q", format=".4f")],
    )
    bars = base.mark_rule().encode(x="low:Q", x2="high:Q")
    return alt.layer(bars, points).properties(width=WIDTH, title=title)


# --- saving ------------------------------------------------------------------------------------


def save_chart(chart: alt.TopLevelMixin, out: str | Path) -> Path:
    """Write `chart` as .html (Vega JS inlined: works offline), .png or .svg (vl-convert)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".png", ".svg"):
        raise ValueError(f"{out}: unsupported chart format {suffix or '(none)'!r}; use .html, .png or .svg")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".html":
        chart.save(str(out), format="html", inline=True)
    else:
        import vl_convert as vlc

        spec = chart.to_dict()
        if suffix == ".png":
            out.write_bytes(vlc.vegalite_to_png(spec, vl_version=VL_VERSION, scale=2))
        else:
            out.write_text(vlc.vegalite_to_svg(spec, vl_version=VL_VERSION))
    return out
