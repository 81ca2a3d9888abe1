"""One self-contained HTML report: every chart and table of the analyses for a set of runs.

`build_report(con, runs, baseline, out)` writes a single page that works from file:// with no
network: the Vega, Vega-Lite and vega-embed JavaScript comes from vl-convert's bundled copy
(`vl_convert.javascript_bundle()`, the same code Altair inlines with `inline=True`) and is
written into the page once; each chart is a `<div>` plus its Vega-Lite spec (data inline).
When every chart has been embedded (or failed), the page sets `data-charts-done` on <body> to
the number of charts drawn and reports failures through `console.error`, so a headless
browser (tests/test_report_browser.py) can wait for it and check for errors.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import polars as pl

from analysis import charts, curves, tables

# --- the page ----------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
p.note { color: #555; font-size: 0.9em; max-width: 60em; }
.chart { margin: 1em 0; }
"""

# Embeds every chart, then marks <body> so tests (and people) can tell rendering finished.
EMBED_SCRIPT = """
(function () {
  const specs = JSON.parse(document.getElementById("chart-specs").textContent);
  const options = {renderer: "svg", actions: {export: true, source: false, compiled: false, editor: false}};
  const jobs = Object.entries(specs).map(([id, spec]) =>
    vegaEmbed("#" + id, spec, options).then(() => true, (error) => {
      console.error("chart " + id + " failed: " + error);
      return false;
    }));
  Promise.all(jobs).then((ok) => {
    document.body.dataset.chartsDone = String(ok.filter(Boolean).length);
  });
})();
"""


def format_value(value) -> str:
    """A table cell: floats to 4 decimals (large ones as integers), ints with separators."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def table_html(df: pl.DataFrame) -> str:
    """An HTML table of a small frame (text left-aligned, numbers right-aligned)."""
    if df.height == 0:
        return '<p class="note">(no rows)</p>'
    text = {name for name, dtype in df.schema.items() if not dtype.is_numeric()}
    cls = {c: ' class="text"' if c in text else "" for c in df.columns}
    head = "".join(f"<th{cls[c]}>{html.escape(c)}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td{cls[c]}>{html.escape(format_value(v))}</td>" for c, v in zip(df.columns, row)) + "</tr>"
        for row in df.iter_rows()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def script_json(obj) -> str:
    """JSON that is safe inside a <script> element: no `</script>` or `<!--` can end it early."""
    return json.dumps(obj, allow_nan=False).replace("<", "\\u003c")


@dataclass
class Page:
    """Headings, notes, tables and charts in order, rendered into one HTML string."""

    title: str
    parts: list[str] = field(default_factory=list)
    specs: dict[str, dict] = field(default_factory=dict)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def table(self, df: pl.DataFrame, caption: str | None = None) -> None:
        if caption:
            self.parts.append(f"<h3>{html.escape(caption)}</h3>")
        self.parts.append(table_html(df))

    def chart(self, chart) -> None:
        chart_id = f"chart-{len(self.specs) + 1}"
        self.specs[chart_id] = chart.to_dict()
        self.parts.append(f'<div class="chart" id="{chart_id}"></div>')

    def render(self) -> str:
        import vl_convert as vlc

        created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                f"<title>{html.escape(self.title)}</title>",
                f"<style>{STYLE}</style>",
                # Vega + Vega-Lite + vega-embed bundled by vl-convert: no CDN, works offline.
                f'<script type="text/javascript">{vlc.javascript_bundle(vl_version=charts.VL_VERSION)}</script>',
                "</head><body>",
                f"<h1>{html.escape(self.title)}</h1>",
                f'<p class="note">Generated {created}.</p>',
                *self.parts,
                f'<script type="application/json" id="chart-specs">{script_json(self.specs)}</script>',
                f"<script>{EMBED_SCRIPT}</script>",
                "</body></html>",
            ]
        )


# --- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportWindows:
    """Token windows of the report's tables and learning curves (the study's, scaled to the run).

    Defaults are fractions of `tokens`, the fewest tokens any chosen run has trained: the study
    trained 500M tokens and reported tokens 400M-500M (mean loss), the last 10M (word-start
    ratio) and plotted learning curves from 300M.
    """

    tokens: int
    window_start: int
    window_end: int
    last_tokens: int
    learning_start: int
    smooth_tokens: int

    @classmethod
    def study_like(cls, tokens: int) -> "ReportWindows":
        return cls(
            tokens=tokens,
            window_start=tokens * 4 // 5,
            window_end=tokens,
            last_tokens=max(tokens // 50, 1),
            learning_start=tokens * 3 // 5,
            smooth_tokens=max(tokens // 100, 1),
        )


def trained_tokens(con, runs: Sequence[str]) -> dict[str, int]:
    """Tokens recorded in the loss table per run (0 for a run with no losses yet)."""
    found = dict(
        con.sql(
            "SELECT run, max(tokens) FROM learning_curve WHERE list_contains($runs, run) GROUP BY run",
            params={"runs": list(runs)},
        ).fetchall()
    )
    return {run: int(found.get(run) or 0) for run in runs}


def build_report(
    con,
    runs: Sequence[str],
    baseline: str,
    out: str | Path,
    windows: ReportWindows | None = None,
    n_first_positions: int = 30,
    log_x: bool = False,
    pair: Sequence[str] | None = None,
    noise: str | Sequence[str] | None = None,
) -> Path:
    """Write the HTML report for `runs` compared with `baseline` to `out`; returns the path.

    The baseline is added to the runs when missing. Raises curves.UnknownRunError for runs the
    workspace lacks and ValueError when a run has no recorded losses. With `pair` (A, B), a
    paired per-token comparison of A and B is added (analysis/paired.py), with `noise` as its
    noise floor (one run: paired with A; or two runs X, Y); paired.PairingError (a ValueError)
    when they cannot be paired.
    """
    paired_report = None
    if pair is not None:  # first: a pair that cannot be paired fails before the page is built
        from analysis import paired

        if len(pair) != 2:
            raise ValueError(f"a paired comparison needs two runs A,B; got {', '.join(pair) or 'none'}")
        paired_report = paired.pair_report(con, pair[0], pair[1], noise=noise)
    runs = curves.check_runs(con, runs)
    curves.check_runs(con, [baseline])
    if baseline not in runs:
        runs = [baseline, *runs]
    tokens = trained_tokens(con, runs)
    empty = [run for run, n in tokens.items() if n == 0]
    if empty:
        raise ValueError(f"no losses recorded for run(s): {', '.join(empty)}")
    w = windows or ReportWindows.study_like(min(tokens.values()))
    others = [run for run in runs if run != baseline]

    page = Page(f"configaformer report: {', '.join(runs)} (baseline {baseline})")
    page.note(f"Token windows below scale the study's (trained 500M) to {w.tokens:,} tokens, "
              "the fewest any of these runs has recorded.")

    # --- runs and configs
    page.heading("Runs")
    groups = tables.config_groups(con, runs, reference=baseline)
    info = con.sql(
        """SELECT run, status, dataset, seed, tokens_trained, n_params, n_params_non_embedding
           FROM runs WHERE list_contains($runs, run) ORDER BY list_position($runs, run)""",
        params={"runs": runs},
    ).pl()
    page.table(info.join(groups.select("run", "group"), on="run", how="left"))
    page.note(
        "group: runs whose resolved configs agree once the seed, device, logging and loss-recording "
        "settings are set aside, named by how they differ from the baseline's config."
    )
    page.heading(f"Config differences from the baseline ({baseline})")
    page.table(tables.config_differences(con, runs, baseline))

    # --- 1-3: curves per segment
    page.heading("Loss vs context position, per training segment")
    page.note("Mean loss at each position (the model saw position + 1 tokens), one line per segment: "
              "first segment red, last blue.")
    page.chart(charts.position_chart(curves.position_curve(con, runs), log_x=log_x))
    if others:
        relative = curves.relative_curve(con, others, baseline, by="position")
        page.chart(charts.relative_chart(relative, "position", "ratio", log_x=log_x))
        page.chart(charts.relative_chart(relative, "position", "difference", log_x=log_x))

    page.heading("Loss vs vocabulary bucket, per training segment")
    page.note("Buckets: tokens sorted by frequency, a new bucket every bucket_tokens cumulative "
              "occurrences (bucket 0 = most frequent).")
    page.chart(charts.bucket_chart(curves.bucket_curve(con, runs)))
    if others:
        relative = curves.relative_curve(con, others, baseline, by="bucket")
        page.chart(charts.relative_chart(relative, "bucket", "ratio"))
        page.chart(charts.relative_chart(relative, "bucket", "difference"))

    # --- 4: first positions
    page.heading(f"The first {n_first_positions} positions")
    page.note(f"Loss pooled over all segments, min-max normalized per run over positions 0-{n_first_positions - 1}; "
              "below, the share of targets at each position that start a word.")
    page.chart(charts.first_positions_chart(curves.first_positions(con, runs, n_first_positions)))

    # --- 5: learning curves
    page.heading("Learning curves")
    page.note(f"Loss smoothed over a trailing window of {w.smooth_tokens:,} tokens, from {w.learning_start:,} tokens.")
    page.chart(charts.learning_chart(curves.learning_curves(con, runs, w.smooth_tokens, w.learning_start)))

    # --- 6: tables
    page.heading(f"Mean loss on tokens [{w.window_start:,}, {w.window_end:,})")
    per_run = tables.window_loss(con, runs, w.window_start, w.window_end)
    by_config = tables.summarize_by_config(per_run, groups, "mean_loss")
    page.table(by_config, "Per config (mean ± sample std over seeds)")
    page.chart(charts.config_summary_chart(by_config, "mean loss (nats)", "Mean loss per config"))
    page.table(per_run, "Per run")

    page.heading(f"Word-start / sub-word loss ratio, last {w.last_tokens:,} tokens")
    ratios = tables.word_start_ratio(con, runs, w.last_tokens)
    by_config = tables.summarize_by_config(ratios, groups, "ratio")
    page.table(by_config, "Per config (mean ± sample std over seeds)")
    page.chart(charts.config_summary_chart(by_config, "word-start / sub-word loss", "Word-start / sub-word loss ratio"))
    page.table(ratios, "Per run")

    if paired_report is not None:
        from analysis import paired_charts

        paired_charts.add_report_section(page, paired_report)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page.render(), encoding="utf-8")
    return out


# --- one chart (python cli.py plot) ----------------------------------------------------------------

PLOT_KINDS = ("position", "vocab", "learning", "first-positions", "paired")


def build_plot(
    con,
    kind: str,
    runs: Sequence[str],
    baseline: str | None = None,
    segments: Sequence[int] | None = None,
    log_x: bool = False,
    measure: str = "ratio",
    window_tokens: int | None = None,
    start_tokens: int = 0,
    n_positions: int = 30,
    noise: str | Sequence[str] | None = None,
):
    """The chart of one analysis, as `python cli.py plot KIND` draws it.

    position / vocab: loss per segment; with `baseline`, the `measure` (ratio or difference) to
    the baseline's curve. learning: smoothed over `window_tokens` (default: 1% of the fewest
    tokens any run trained) from `start_tokens`. first-positions: the first `n_positions`.
    paired: the paired comparison of two runs A, B (`segments` pools those segments), with
    `noise` as its noise floor (analysis/paired.py).
    """
    if kind not in PLOT_KINDS:
        raise ValueError(f"unknown plot {kind!r}; choose one of {', '.join(PLOT_KINDS)}")
    runs = curves.check_runs(con, runs)
    if kind == "paired":
        from analysis import paired, paired_charts

        if len(runs) != 2:
            raise ValueError(f"plot paired needs two runs A B; got {', '.join(runs)}")
        report = paired.pair_report(con, runs[0], runs[1], noise=noise, segments=segments, examples=0)
        return paired_charts.paired_chart(report)
    if kind in ("position", "vocab"):
        by = "position" if kind == "position" else "bucket"
        if baseline is not None:
            relative = curves.relative_curve(con, runs, baseline, by=by, segments=segments)
            return charts.relative_chart(relative, by, measure, log_x=log_x)
        if by == "position":
            return charts.position_chart(curves.position_curve(con, runs, segments), log_x=log_x)
        return charts.bucket_chart(curves.bucket_curve(con, runs, segments))
    if kind == "learning":
        if window_tokens is None:
            window_tokens = max(min(trained_tokens(con, runs).values()) // 100, 1)
        return charts.learning_chart(curves.learning_curves(con, runs, window_tokens, start_tokens))
    return charts.first_positions_chart(curves.first_positions(con, runs, n_positions, segments))
