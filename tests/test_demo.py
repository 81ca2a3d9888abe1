"""The demo end to end, at a smaller size: data, three runs, report, charts, release."""

import json

import lossdb
from demo import DemoPlan, run_demo
from lossdb.export import verify_release


def test_demo_runs_the_whole_story_and_a_second_run_reuses_it(tmp_path):
    plan = DemoPlan(seq_len=64, tokens=25_000)
    made = run_demo(tmp_path, plan)

    runs = [plan.run_name(c) for c in plan.configs]
    with lossdb.connect(tmp_path) as con:
        status = dict(con.sql("SELECT run, status FROM runs").fetchall())
        rows = dict(con.sql("SELECT run, count(*) FROM losses GROUP BY run").fetchall())
    assert status == {run: "finished" for run in runs}
    for run in runs:
        info = json.loads((tmp_path / "runs" / run / "run.json").read_text())
        assert rows[run] == info["tokens_trained"] > 0

    report = made["report"].read_text()
    assert all(run in report for run in runs) and "<script" in report
    for key, path in made.items():
        if key.startswith("chart:"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
    assert verify_release(made["release"]) == []

    # everything exists now: a second demo trains nothing and rebuilds nothing
    before = {run: (tmp_path / "runs" / run / "run.json").read_text() for run in runs}
    run_demo(tmp_path, plan)
    assert {run: (tmp_path / "runs" / run / "run.json").read_text() for run in runs} == before
