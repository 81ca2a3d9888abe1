"""The HTML report in a real browser: headless Chromium (Debian's `chromium` package) driven
over the DevTools protocol with a small websocket client (the `websockets` package).

Checked: the page loads from file:// with no console errors, no uncaught exceptions and no
request to the network, and every chart draws an SVG holding data marks. A page with a chart
that cannot draw must fail the same check (so the check can fail).

Skipped when /usr/bin/chromium (or $CHROMIUM) is missing (`apt-get install -y chromium`),
unless $REQUIRE_BROWSER=1 (CI), which makes a missing browser a failure.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

import lossdb
from analysis import charts, curves
from analysis.report import Page, build_report
from lossdb.synthetic import SyntheticDataset, SyntheticRun, make_workspace

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_S = 30



@pytest.fixture(scope="module", autouse=True)
def chromium_present():
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} missing (apt-get install -y chromium)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


# For each chart <div>: how many data marks its SVG draws. Vega gives data marks the class
# `role-mark` (axes, legends and titles get other roles); a line is one <path> with a non-empty
# `d`, a point one <path>, a rule one <line>.
COUNT_MARKS_JS = """
Array.from(document.querySelectorAll("div.chart")).map((div) => ({
  id: div.id,
  svg: div.querySelector("svg") !== null,
  marks: Array.from(div.querySelectorAll("svg g.role-mark > *"))
    .filter((el) => el.tagName !== "path" || (el.getAttribute("d") || "").length > 2).length,
}))
"""


# --- a minimal DevTools-protocol client ---------------------------------------------------------


class Browser:
    """Headless Chromium with one page, driven over the DevTools websocket."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        log_path = profile / "chromium.log"
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile / 'profile'}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        port = None
        deadline = time.time() + TIMEOUT_S
        while port is None:
            match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)", log_path.read_text())
            if match:
                port = int(match.group(1))
            elif self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"chromium did not start: {log_path.read_text()[-2000:]}")
            else:
                time.sleep(0.05)
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT_S))
        page_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.ws = connect(page_url, max_size=None, open_timeout=TIMEOUT_S).__enter__()
        self._ids = itertools.count(1)
        self.events: list[dict] = []
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params) -> dict:
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=TIMEOUT_S))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)  # console messages, exceptions, requests ...

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._log.close()


def render(path: Path) -> dict:
    """Open `path` from file://, wait until the page says every chart settled, report what happened.

    Returns {"charts": [{id, svg, marks}], "done": charts drawn per the page, "errors": console
    errors, uncaught exceptions and error log entries, "requests": non-file URLs requested}.
    """
    scratch = Path(tempfile.mkdtemp(prefix="report-browser-"))
    browser = Browser(scratch)
    try:
        browser.call("Page.navigate", url=path.resolve().as_uri())
        deadline = time.time() + TIMEOUT_S
        done = None
        while time.time() < deadline:
            done = browser.evaluate("document.readyState === 'complete' ? (document.body.dataset.chartsDone ?? null) : null")
            if done is not None:
                break
            time.sleep(0.1)
        chart_marks = browser.evaluate(COUNT_MARKS_JS)
        browser.call("Runtime.evaluate", expression="0")  # collect events that arrived meanwhile
        errors, requests = [], []
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details.get("text"))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(params["entry"]["text"])
            elif method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(("file:", "data:", "blob:", "about:")):
                    requests.append(url)
        return {"charts": chart_marks, "done": None if done is None else int(done), "errors": errors, "requests": requests}
    finally:
        browser.close()
        shutil.rmtree(scratch, ignore_errors=True)


def assert_every_chart_draws(result: dict, n_charts: int) -> None:
    assert result["errors"] == [], result["errors"]
    assert result["requests"] == [], f"the page reached for the network: {result['requests']}"
    assert result["done"] == n_charts, f"{result['done']} of {n_charts} charts rendered"
    assert len(result["charts"]) == n_charts
    for chart in result["charts"]:
        assert chart["svg"], f"{chart['id']} drew no SVG"
        assert chart["marks"] > 0, f"{chart['id']} drew no marks"


# --- tests ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    make_workspace(
        home,
        [SyntheticDataset(n_sequences=48, seq_len=40)],
        [
            SyntheticRun("base", steps=6, segment_tokens=320),
            SyntheticRun("base-s2", seed=2, steps=6, segment_tokens=320),
            SyntheticRun("shift", seed=1, steps=6, segment_tokens=320, quality=0.95, config={"model": {"shift": [16, 16]}}),
        ],
        keep_rows=False,
    )
    return home


def test_report_renders_every_chart_offline(workspace, tmp_path):
    con = lossdb.connect(workspace)
    out = build_report(con, ["base", "base-s2", "shift"], "base", tmp_path / "report.html")
    n_charts = out.read_text().count('<div class="chart"')
    assert n_charts >= 10  # position, bucket (+ ratio, difference each), first positions, learning, 2 tables
    assert_every_chart_draws(render(out), n_charts)


def test_charts_that_do_not_draw_fail_the_check(workspace, tmp_path):
    con = lossdb.connect(workspace)
    page = Page("one good chart, one broken, one empty")
    curve = curves.position_curve(con, ["base"])
    page.chart(charts.position_chart(curve))
    page.specs["chart-2"] = {"mark": "no-such-mark", "data": {"values": [{"a": 1}]}}  # vega-embed rejects it
    page.parts.append('<div class="chart" id="chart-2"></div>')
    page.chart(charts.position_chart(curve.head(0)))  # draws axes but no data marks
    out = tmp_path / "broken.html"
    out.write_text(page.render())
    result = render(out)
    assert [c["marks"] > 0 for c in result["charts"]] == [True, False, False]
    assert result["done"] == 2 and any("chart-2" in e for e in result["errors"])
    with pytest.raises(AssertionError, match="chart-2"):
        assert_every_chart_draws(result, 3)
    result["errors"] = []  # even without the console error, the empty chart fails
    result["done"] = 3
    with pytest.raises(AssertionError, match="chart-2 drew no"):
        assert_every_chart_draws(result, 3)
    result["charts"] = [result["charts"][0], result["charts"][2]]
    result["done"] = 2
    with pytest.raises(AssertionError, match="chart-3 drew no marks"):
        assert_every_chart_draws(result, 2)
