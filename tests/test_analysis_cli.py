"""`python cli.py plot` and `python cli.py report`: outputs and one-line errors (CliRunner)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli import app
from lossdb.synthetic import SyntheticDataset, SyntheticRun, make_workspace

runner = CliRunner()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    make_workspace(
        home,
        [SyntheticDataset()],
        [SyntheticRun("base"), SyntheticRun("shift", seed=1, quality=0.9, config={"model": {"shift": [16, 16]}})],
        keep_rows=False,
    )
    return home


def invoke(home, *args):
    return runner.invoke(app, [*args, "--home", str(home)])


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, name",
    [
        (["plot", "position", "--runs", "base,shift", "--log-x"], "position.html"),
        (["plot", "vocab", "--runs", "shift", "--baseline", "base", "--measure", "difference"], "vocab.html"),
        (["plot", "learning", "--runs", "base,shift", "--window", "100", "--start", "128"], "learning.html"),
        (["plot", "first-positions", "--runs", "base", "--segment", "1", "--positions", "8"], "first-positions.html"),
    ],
)
def test_plot_writes_html_under_home(home, args, name):
    result = invoke(home, *args)
    assert result.exit_code == 0, result.output
    page = (home / "plots" / name).read_text()
    assert "vegaEmbed" in page and "cdn.jsdelivr" not in page


def test_plot_svg_out(home, tmp_path):
    out = tmp_path / "p.svg"
    result = invoke(home, "plot", "position", "--runs", "base", "--segment", "0", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text().lstrip().startswith("<svg")


def test_report_writes_one_page(home, tmp_path):
    out = tmp_path / "r.html"
    result = invoke(home, "report", "--runs", "shift", "--baseline", "base", "--out", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.count('<div class="chart"') >= 10 and "model.shift" in page


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["plot", "position", "--runs", "base,nope"], ["unknown run(s): nope", "known runs: base, shift"]),
        (["plot", "position", "--runs", "shift", "--baseline", "nope"], ["unknown run(s): nope", "known runs: base, shift"]),
        (["plot", "scatter", "--runs", "base"], ["unknown plot 'scatter'", "first-positions"]),
        (["plot", "position", "--runs", "base", "--out", "x.pdf"], ["--out x.pdf", ".svg"]),
        (["plot", "learning", "--runs", "base", "--window", "5Q"], ["--window 5Q", "5M"]),
        (["plot", "learning", "--runs", "base", "--start", "-3"], ["--start -3", "negative"]),
        (["plot", "position", "--runs", "shift", "--baseline", "base", "--measure", "quotient"], ["quotient", "ratio"]),
        (["plot", "position", "--runs", " , "], ["no runs given"]),
        (["report", "--runs", "shift,ghost", "--baseline", "base"], ["unknown run(s): ghost", "known runs: base, shift"]),
        (["report", "--runs", "shift", "--baseline", "base", "--out", "r.txt"], ["--out r.txt", ".html"]),
    ],
)
def test_errors_are_one_line(home, args, fragments):
    one_line_error(invoke(home, *args), *fragments)


def test_empty_workspace_says_there_are_no_runs(tmp_path):
    one_line_error(invoke(tmp_path, "plot", "position", "--runs", "base"), "unknown run(s): base", "known runs: (none")


def test_run_without_losses_is_a_clear_error(tmp_path):
    import json

    make_workspace(tmp_path, [SyntheticDataset()], [SyntheticRun("base")], keep_rows=False)
    (tmp_path / "runs" / "fresh").mkdir()
    (tmp_path / "runs" / "fresh" / "run.json").write_text(json.dumps({"run": "fresh", "status": "running", "dataset": "synth"}))
    one_line_error(invoke(tmp_path, "report", "--runs", "fresh", "--baseline", "base"), "no losses recorded for run(s): fresh")
