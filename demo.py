"""The whole story on the embedded default corpus, offline, on a couple of CPU cores.

`python cli.py demo` builds a small article data set from the Python standard library, trains
the tiny baseline and two tiny variants (a token shift and a RoPE variant) while recording every
token's loss, renders the HTML report and the charts, exports a release, and prints where
everything is with a few SQL queries to try. Every step is skipped when its result already
exists (an interrupted run resumes), so running it again is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

CONFIGS = Path(__file__).resolve().parent / "configs" / "tiny"


@dataclass(frozen=True)
class DemoPlan:
    """What the demo builds; the defaults fit in ~10 minutes on two CPU cores."""

    dataset: str = "demo"
    seq_len: int = 256
    tokens: int = 300_000
    tokenizer: str = "bpe:4096"
    baseline: str = "baseline"
    variants: tuple[str, ...] = ("shift_384_384", "rope_v")

    def run_name(self, config: str) -> str:
        return f"tiny-{config}"

    @property
    def configs(self) -> tuple[str, ...]:
        return (self.baseline, *self.variants)


SQL_EXAMPLES = (
    ("Runs and what they trained", "SELECT run, status, tokens_trained, n_params FROM runs"),
    ("Mean loss per segment", "SELECT run, segment, round(sum(mean_loss * n) / sum(n), 4) AS loss "
                              "FROM position_curve GROUP BY ALL ORDER BY run, segment"),
    ("Where the shift helps, by position bucket",
     "SELECT position // 32 * 32 AS positions, round(avg(ratio), 4) AS ratio "
     "FROM relative_position_curve('tiny-baseline') WHERE run = 'tiny-shift_384_384' "
     "GROUP BY ALL ORDER BY positions"),
    ("The 5 hardest tokens of the last segment",
     "SELECT v.text, count(*) AS n, round(avg(l.loss), 3) AS loss FROM losses l "
     "JOIN vocab v ON v.token_id = l.token_id AND v.dataset = 'demo' "
     "WHERE l.run = 'tiny-baseline' AND l.segment = (SELECT max(segment) FROM losses) "
     "GROUP BY ALL HAVING n >= 20 ORDER BY loss DESC LIMIT 5"),
)


def run_demo(home: Path, plan: DemoPlan = DemoPlan(), console: Console | None = None) -> dict[str, Path]:
    """Run every step under `home`; returns the paths of what it made."""
    import lossdb
    from analysis.report import build_plot, build_report
    from analysis.charts import save_chart
    from lossdb.export import export_release
    from train.config import load_config
    from train.dataset import build_dataset, open_dataset
    from train.runinfo import read_run_info
    from train.trainer import train
    from train.workspace import data_dir, run_dir

    console = console or Console()
    home = Path(home).resolve()

    # --- data ---------------------------------------------------------------------------------------
    console.rule("1. data: stdlib articles")
    if (data_dir(home, plan.dataset) / "manifest.json").exists():
        console.print(f"data set {plan.dataset!r} already built")
    else:
        build_dataset(home, plan.dataset, source="stdlib", tokenizer=plan.tokenizer, seq_len=plan.seq_len,
                      tokens=plan.tokens, allow_short=True)
    ds = open_dataset(home, plan.dataset)
    console.print(f"{ds.n_sequences:,} articles x {ds.seq_len + 1} tokens, vocabulary {ds.vocab_size:,}")

    # --- train --------------------------------------------------------------------------------------
    runs = []
    for config in plan.configs:
        run = plan.run_name(config)
        runs.append(run)
        console.rule(f"2. train {run} (configs/tiny/{config}.toml)")
        info = read_run_info(run_dir(home, run)) or {}
        if info.get("status") == "finished":
            console.print(f"run {run} already finished")
            continue
        cfg = load_config(CONFIGS / f"{config}.toml", [f'data.dataset="{plan.dataset}"'])
        result = train(cfg, home=home, run=run, resume=run_dir(home, run).exists())
        if result.status != "finished":
            raise RuntimeError(f"run {run} stopped at step {result.steps}; run the demo again to resume")

    # --- report and charts --------------------------------------------------------------------------
    console.rule("3. report and charts")
    baseline = plan.run_name(plan.baseline)
    made: dict[str, Path] = {}
    with lossdb.connect(home) as con:
        made["report"] = build_report(con, runs, baseline, home / "reports" / "demo.html")
        for kind in ("position", "vocab", "learning", "first-positions"):
            made[f"chart:{kind}"] = save_chart(build_plot(con, kind, runs), home / "charts" / f"{kind}.png")
        made["chart:position-ratio"] = save_chart(
            build_plot(con, "position", runs[1:], baseline=baseline),
            home / "charts" / "position-ratio.png")

    # --- release ------------------------------------------------------------------------------------
    console.rule("4. release")
    made["release"] = export_release(home, runs, home / "release" / "demo", name="configaformer-demo", force=True).out

    # --- where things are ---------------------------------------------------------------------------
    console.rule("done")
    console.print(f"workspace   {home}")
    for key, path in made.items():
        console.print(f"{key:<22}  {path}")
    console.print("\nTry some SQL over every recorded token:")
    for title, sql in SQL_EXAMPLES:
        console.print(f"  # {title}\n  python cli.py sql --home {home} \"{sql}\"\n", soft_wrap=True)
    return made
