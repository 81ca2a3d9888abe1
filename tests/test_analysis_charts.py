"""Chart specs carry the expected encodings and only aggregated rows; saving works offline."""

from __future__ import annotations

import pytest

import lossdb
from analysis import charts, curves, tables
from lossdb.synthetic import SyntheticDataset, SyntheticRun, make_workspace


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    make_workspace(
        home,
        [SyntheticDataset()],
        [SyntheticRun("base"), SyntheticRun("shift", seed=1, quality=0.9, config={"model": {"shift": [16, 16]}})],
        keep_rows=False,
    )
    return lossdb.connect(home)


def unit_specs(spec: dict) -> list[dict]:
    """Every single-view spec (with a mark) inside a top-level spec: layers, facets, concats."""
    found = []
    if "mark" in spec:
        found.append(spec)
    for key in ("layer", "vconcat", "hconcat", "concat"):
        for child in spec.get(key, []):
            found.extend(unit_specs(child))
    if "spec" in spec:
        found.extend(unit_specs(spec["spec"]))
    return found


def data_rows(spec: dict) -> int:
    return sum(len(values) for values in spec.get("datasets", {}).values())


def assert_segment_colour(encoding: dict) -> None:
    color = encoding["color"]
    assert color["field"] == "segment" and color["type"] == "quantitative"
    assert color["scale"]["range"] == ["#d62728", "#1f77b4"]  # first segment red, last blue


def test_position_chart_encodings(con):
    df = curves.position_curve(con, ["base"])
    spec = charts.position_chart(df).to_dict()
    (line,) = unit_specs(spec)
    assert line["mark"]["type"] == "line"
    enc = line["encoding"]
    assert enc["x"]["field"] == "position" and enc["x"]["type"] == "quantitative"
    assert enc["y"]["field"] == "mean_loss"
    assert_segment_colour(enc)
    assert enc["detail"]["field"] == "segment"  # one line per segment
    assert "scale" not in enc["x"] or enc["x"]["scale"].get("type") != "symlog"
    assert data_rows(spec) == df.height  # aggregated points only


def test_position_chart_log_x_and_facets_by_run(con):
    df = curves.position_curve(con, ["base", "shift"])
    spec = charts.position_chart(df, log_x=True).to_dict()
    assert spec["facet"]["field"] == "run"
    (line,) = unit_specs(spec)
    assert line["encoding"]["x"]["scale"]["type"] == "symlog"
    assert 0 in line["encoding"]["x"]["axis"]["values"]
    assert data_rows(spec) == df.height


def test_bucket_chart_encodings(con):
    df = curves.bucket_curve(con, ["base"])
    (line,) = unit_specs(charts.bucket_chart(df).to_dict())
    assert line["encoding"]["x"]["field"] == "bucket" and line["encoding"]["y"]["field"] == "mean_loss"
    assert_segment_colour(line["encoding"])


@pytest.mark.parametrize("measure, level", [("ratio", 1.0), ("difference", 0.0)])
@pytest.mark.parametrize("by", ["position", "bucket"])
def test_relative_chart_has_a_reference_rule(con, by, measure, level):
    df = curves.relative_curve(con, ["shift"], "base", by=by)
    spec = charts.relative_chart(df, by, measure).to_dict()
    line, rule = unit_specs(spec)
    assert line["encoding"]["x"]["field"] == by and line["encoding"]["y"]["field"] == measure
    assert_segment_colour(line["encoding"])
    assert rule["mark"]["type"] == "rule" and rule["encoding"]["y"]["datum"] == level
    assert "aggregate" in rule["transform"][0]  # one rule per panel, not one per point
    assert "base" in str(spec["title"])
    with pytest.raises(ValueError, match="ratio"):
        charts.relative_chart(df, by, "quotient")


def test_first_positions_chart_shows_loss_and_word_start_share(con):
    df = curves.first_positions(con, ["base", "shift"], n_positions=8)
    spec = charts.first_positions_chart(df).to_dict()
    loss, share = unit_specs(spec)
    assert loss["encoding"]["x"]["field"] == share["encoding"]["x"]["field"] == "position"
    assert loss["encoding"]["y"]["field"] == "normalized_loss"
    assert share["encoding"]["y"]["field"] == "word_start_share"
    assert loss["encoding"]["color"] == {"field": "run", "title": "run", "type": "nominal"}
    assert data_rows(spec) == df.height


def test_learning_chart_thins_long_runs(con):
    df = curves.learning_curves(con, ["base", "shift"], window_tokens=128)
    (line,) = unit_specs(charts.learning_chart(df).to_dict())
    assert line["encoding"]["x"]["field"] == "tokens" and line["encoding"]["y"]["field"] == "smoothed_loss"
    assert line["encoding"]["color"]["field"] == "run"
    thin = charts.learning_chart(df, max_points_per_run=3).to_dict()
    (values,) = thin["datasets"].values()
    for run in ("base", "shift"):
        kept = [v["tokens"] for v in values if v["run"] == run]
        assert len(kept) <= 4 and kept[-1] == df.filter(df["run"] == run)["tokens"].max()  # the last step stays


def test_config_summary_chart_has_error_bars(con):
    runs = ["base", "shift"]
    summary = tables.summarize_by_config(tables.window_loss(con, runs, 0, 512), tables.config_groups(con, runs), "mean_loss")
    bars, points = unit_specs(charts.config_summary_chart(summary, "mean loss", "t").to_dict())
    assert bars["mark"]["type"] == "rule" and bars["encoding"]["x"]["field"] == "low" and bars["encoding"]["x2"]["field"] == "high"
    assert points["encoding"]["x"]["field"] == "mean" and points["encoding"]["y"]["field"] == "group"


def test_charts_take_more_than_altairs_5000_rows():
    import polars as pl

    df = pl.DataFrame(
        {"run": ["r"] * 10240, "segment": [s for s in range(10) for _ in range(1024)], "position": list(range(1024)) * 10, "mean_loss": [3.0] * 10240}
    )
    assert data_rows(charts.position_chart(df).to_dict()) == 10240


def test_save_chart_html_png_svg_offline(con, tmp_path):
    chart = charts.position_chart(curves.position_curve(con, ["base"]))
    page = charts.save_chart(chart, tmp_path / "p.html").read_text()
    assert "vegaEmbed" in page and "cdn.jsdelivr" not in page and "<script src=" not in page
    assert charts.save_chart(chart, tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = charts.save_chart(chart, tmp_path / "sub" / "p.svg").read_text()
    assert svg.lstrip().startswith("<svg") and "<path" in svg
    with pytest.raises(ValueError, match="use .html, .png or .svg"):
        charts.save_chart(chart, tmp_path / "p.pdf")


# --- the report's page pieces --------------------------------------------------------------------


def test_report_windows_scale_the_studys():
    from analysis.report import ReportWindows

    w = ReportWindows.study_like(500_000_000)
    assert (w.window_start, w.window_end) == (400_000_000, 500_000_000)
    assert w.last_tokens == 10_000_000 and w.learning_start == 300_000_000 and w.smooth_tokens == 5_000_000
    assert ReportWindows.study_like(10).last_tokens == 1  # never an empty window


def test_report_tables_escape_and_format():
    import polars as pl

    from analysis.report import table_html

    page = table_html(pl.DataFrame({"key": ["<b>&"], "mean": [3.14159265], "n": [1234567], "std": [None]}, schema_overrides={"std": pl.Float64}))
    assert "&lt;b&gt;&amp;" in page and "3.1416" in page and "1,234,567" in page and "<td></td>" in page


def test_spec_json_cannot_end_the_script_element():
    from analysis.report import script_json

    text = script_json({"title": "</script><script>alert(1)</script> <!--"})
    assert "</script" not in text and "<!--" not in text
    import json

    assert json.loads(text)["title"].startswith("</script>")
