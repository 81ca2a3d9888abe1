"""Altair charts of a paired comparison (analysis/paired.py): mean delta with 95% interval bands.

delta = loss_B - loss_A, so a curve below the dashed zero line is where B has the lower loss. The
pair is drawn in blue and its noise floor (the same comparison between two seeds of one config)
in grey, so a reader sees at once whether a difference is larger than seed-to-seed noise.
Every frame is already aggregated (one row per group), never raw tokens.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from analysis.charts import HEIGHT, LOG_TICKS, SEGMENT_RANGE, WIDTH, chart_data

PAIR_COLOR, NOISE_COLOR = "#1f77b4", "#7f7f7f"
DELTA_TITLE = "loss B − loss A (nats), 95% CI"


def comparison_color(df: pl.DataFrame) -> alt.Color:
    """Blue for the pair, grey for the noise floor, in the frame's order."""
    names = df["comparison"].unique(maintain_order=True).to_list()
    kinds = dict(zip(df["comparison"].to_list(), df["kind"].to_list()))
    colors = [NOISE_COLOR if kinds[name] == "noise" else PAIR_COLOR for name in names]
    return alt.Color("comparison:N", title=None, scale=alt.Scale(domain=names, range=colors),
                     legend=alt.Legend(orient="bottom"))


def _zero_rule(base: alt.Chart) -> alt.Chart:
    # aggregated to one row first: one rule, not one per data point
    return base.transform_aggregate(points="count()").mark_rule(color="black", strokeDash=[4, 3]).encode(
        y=alt.datum(0)
    )


def delta_curve(df: pl.DataFrame, x: alt.X, x_field: str, title: str, extra_tooltip=()) -> alt.LayerChart:
    """Mean delta against `x_field`, a band from low to high, one colour per comparison."""
    columns = ["comparison", "kind", x_field, "mean_delta", "low", "high", "n_tokens", *extra_tooltip]
    base = alt.Chart(chart_data(df, list(dict.fromkeys(columns))))
    color = comparison_color(df)
    tooltip = ["comparison:N", *[f"{c}:Q" for c in extra_tooltip], alt.Tooltip("mean_delta:Q", format=".4f"),
               alt.Tooltip("low:Q", format=".4f"), alt.Tooltip("high:Q", format=".4f"),
               alt.Tooltip("n_tokens:Q", format=",")]
    band = base.mark_area(opacity=0.25).encode(x=x, y=alt.Y("low:Q", title=DELTA_TITLE), y2="high:Q", color=color)
    line = base.mark_line(point=alt.OverlayMarkDef(size=20)).encode(
        x=x, y=alt.Y("mean_delta:Q", title=DELTA_TITLE), color=color, tooltip=tooltip
    )
    return alt.layer(band, line, _zero_rule(base)).properties(width=WIDTH, height=HEIGHT, title=title)


def position_bin_x(df: pl.DataFrame, log_x: bool) -> alt.X:
    """x = the middle of each position bin; log_x: symlog (log(1 + position)) with readable ticks."""
    if not log_x:
        return alt.X("position_mid:Q", title="position (bin middle)")
    max_position = int(df["position_end"].max()) if df.height else None
    ticks = [t for t in LOG_TICKS if max_position is None or t <= max_position]
    return alt.X("position_mid:Q", title="position (bin middle), log scale", scale=alt.Scale(type="symlog"),
                 axis=alt.Axis(values=ticks))


def delta_position_chart(df: pl.DataFrame, log_x: bool = True) -> alt.LayerChart:
    """Mean delta per position bin (`paired.comparison_table(..., "position_bin")`)."""
    return delta_curve(df, position_bin_x(df, log_x), "position_mid", "Paired delta by context position",
                       extra_tooltip=("position_start", "position_end"))


def delta_bucket_chart(df: pl.DataFrame) -> alt.LayerChart:
    """Mean delta per vocabulary bucket (`paired.comparison_table(..., "bucket")`)."""
    x = alt.X("bucket:Q", title="vocabulary bucket (most frequent first)", axis=alt.Axis(tickMinStep=1))
    return delta_curve(df, x, "bucket", "Paired delta by vocabulary bucket")


def delta_segment_chart(df: pl.DataFrame) -> alt.LayerChart:
    """Mean delta per training segment (`paired.comparison_table(..., "segment")`)."""
    x = alt.X("segment:Q", title="training segment", axis=alt.Axis(tickMinStep=1))
    return delta_curve(df, x, "segment", "Paired delta by training segment")


def word_start_chart(df: pl.DataFrame) -> alt.LayerChart:
    """Mean delta of word-start and sub-word targets, with interval bars, per comparison."""
    data = chart_data(
        df.with_columns(pl.when(pl.col("word_start")).then(pl.lit("word start")).otherwise(pl.lit("sub-word"))
                        .alias("target")),
        ["comparison", "kind", "target", "mean_delta", "low", "high", "n_tokens"],
    )
    base = alt.Chart(data).encode(
        x=alt.X("target:N", title=None, sort=["word start", "sub-word"]),
        xOffset=alt.XOffset("comparison:N"),
        color=comparison_color(df),
    )
    bars = base.mark_rule(strokeWidth=2).encode(y=alt.Y("low:Q", title=DELTA_TITLE), y2="high:Q")
    points = base.mark_point(filled=True, size=60).encode(
        y="mean_delta:Q",
        tooltip=["comparison:N", "target:N", alt.Tooltip("mean_delta:Q", format=".4f"),
                 alt.Tooltip("low:Q", format=".4f"), alt.Tooltip("high:Q", format=".4f"),
                 alt.Tooltip("n_tokens:Q", format=",")],
    )
    return alt.layer(bars, points, _zero_rule(alt.Chart(data))).properties(
        width=WIDTH // 2, height=HEIGHT, title="Word starts vs sub-words"
    )


def delta_position_by_segment_chart(df: pl.DataFrame, log_x: bool = True) -> alt.LayerChart:
    """The pair's delta per position bin, one line (and faint band) per segment, red → blue.

    `df` is `paired.group_table(result, "position_bin", per_segment=True)`.
    """
    data = chart_data(df, ["segment", "position_start", "position_end", "position_mid", "mean_delta", "low", "high"])
    x = position_bin_x(df, log_x)
    color = alt.Color("segment:Q", scale=alt.Scale(range=SEGMENT_RANGE), legend=alt.Legend(title="segment", format="d"))
    base = alt.Chart(data)
    band = base.mark_area(opacity=0.08).encode(x=x, y=alt.Y("low:Q", title=DELTA_TITLE), y2="high:Q", color=color,
                                               detail="segment:N")
    line = base.mark_line(strokeWidth=1.2).encode(
        x=x, y="mean_delta:Q", color=color, detail="segment:N",
        tooltip=["segment:Q", "position_start:Q", "position_end:Q", alt.Tooltip("mean_delta:Q", format=".4f")],
    )
    runs = f"{df['run_a'][0]} → {df['run_b'][0]}" if df.height else ""
    return alt.layer(band, line, _zero_rule(base)).properties(
        width=WIDTH, height=HEIGHT, title=f"Paired delta by position, per segment — {runs}"
    )


def paired_chart(report, log_x: bool = True) -> alt.VConcatChart:
    """Every chart of a `paired.PairReport`: position, bucket, segment and word start, the noise
    floor beside the pair in each (what `python cli.py plot paired` draws)."""
    from analysis import paired

    per_segment = paired.group_table(report.result, "position_bin", per_segment=True)
    vocab = report.by_bucket.height > 0  # buckets and word starts need the data set's vocab.parquet
    return alt.vconcat(
        alt.hconcat(delta_position_chart(report.by_position, log_x),
                    *([delta_bucket_chart(report.by_bucket)] if vocab else [])),
        alt.hconcat(delta_segment_chart(report.by_segment),
                    *([word_start_chart(report.by_word_start)] if vocab else [])),
        delta_position_by_segment_chart(per_segment, log_x),
    ).properties(title=f"Paired comparison {report.result.label}"
                 + (f" (noise floor: {report.noise.label})" if report.noise else ""))


def add_report_section(page, report, log_x: bool = True) -> None:
    """The paired comparison as a section of analysis.report's HTML page (`Page`)."""
    from analysis import paired

    r = report.result
    page.heading(f"Paired comparison: {r.label}")
    page.note(
        f"Both runs trained the same data in the same order, so every token's loss difference "
        f"Δ = loss {r.run_b} − loss {r.run_a} is a paired sample (negative: {r.run_b} has the lower loss). "
        f"{r.rows:,} tokens paired. Intervals: 95%, from per-sequence sums (tokens of one sequence are "
        "correlated; docs/paired.md). "
        + (f"Grey: the noise floor, the same comparison between {report.noise.run_a} and {report.noise.run_b} "
           "(two seeds of one config): a difference matters when it clearly exceeds that."
           if report.noise else "No noise floor given (two seeds of one config, trained in the same order).")
    )
    for note in r.notes + (report.noise.notes if report.noise else []):
        page.note(note)
    tables = paired.display_tables(report)
    vocab = report.by_bucket.height > 0  # buckets and word starts need the data set's vocab.parquet
    page.table(tables[0][1], tables[0][0])
    if vocab:
        page.chart(alt.hconcat(delta_segment_chart(report.by_segment), word_start_chart(report.by_word_start)))
    else:
        page.chart(delta_segment_chart(report.by_segment))
        page.note(f"No vocab.parquet for data set {r.dataset!r}: no bucket or word-start analyses.")
    page.chart(delta_position_chart(report.by_position, log_x))
    page.chart(delta_position_by_segment_chart(paired.group_table(r, "position_bin", per_segment=True), log_x))
    if vocab:
        page.chart(delta_bucket_chart(report.by_bucket))
    for title, frame in tables[1:]:
        page.table(frame, title)
