"""configaformer's command line: each command is a few lines over library functions.

Run `python cli.py --help`. Commands are grouped in sections, one per part of the project.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

HomeOption = typer.Option(None, "--home", help="Workspace folder (else $CONFIGAFORMER_HOME, else ./workspace).")


def fail(message: str) -> None:
    """Print a one-line error and exit non-zero: bad input never shows a traceback."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# --- model (config + model summary) -------------------------------------------------------
model_app = typer.Typer(no_args_is_help=True, help="Inspect model configs.")
app.add_typer(model_app, name="model")


@model_app.command("summary")
def model_summary(
    config: Path = typer.Option(..., "--config", help="TOML config (e.g. configs/baseline.toml)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set model.n_layer=4."),
    target_params: Optional[str] = typer.Option(
        None, "--target-params", help="Instead: find the d_model whose non-embedding count best matches this (85M)."),
    n_layer: Optional[int] = typer.Option(None, "--n-layer", help="Depth for --target-params (default: the config's)."),
) -> None:
    """Print each layer's resolved spec, the modules with their shapes, and the parameter counts."""
    from train.config import ConfigError, load_config, parse_size
    from train import summary

    try:
        cfg = load_config(config, overrides)
    except ConfigError as err:
        fail(str(err))
    if target_params is None:
        if n_layer is not None:
            fail("--n-layer goes with --target-params")
        typer.echo(summary.summarize(cfg.model))
        return
    try:
        target = parse_size(target_params)
    except ValueError:
        fail(f"--target-params {target_params}: expected a parameter count like 85000000 or 85M")
    if target < 1 or (n_layer is not None and n_layer < 1):
        fail("--target-params and --n-layer must be positive")
    try:
        typer.echo(summary.width_report(cfg.model, target, n_layer))
    except ConfigError as err:  # e.g. a [[model.layers]] selector out of range for the new depth
        fail(str(err))


@model_app.command("reference")
def model_reference(out: Optional[Path] = typer.Option(None, "--out", help="Write here (e.g. docs/config.md).")) -> None:
    """Print the config reference (every key, its default and meaning) generated from the dataclasses."""
    from train.config import reference_markdown

    if out is None:
        typer.echo(reference_markdown(), nl=False)
    else:
        out.write_text(reference_markdown())

# --- data (article data sets) -------------------------------------------------------------
data_app = typer.Typer(no_args_is_help=True, help="Build and inspect article data sets.")
app.add_typer(data_app, name="data")


def _data_size(option: str, text: Optional[str]) -> Optional[int]:
    """A --tokens style size (300K, 1M, 2.5B) or None; a one-line error otherwise."""
    from train.config import parse_size

    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError:
        fail(f"{option} {text!r}: expected a whole number, optionally with K, M or B (e.g. 300K, 1M)")


@data_app.command("build")
def data_build(
    source: list[str] = typer.Option(
        ["stdlib"], "--source", help="stdlib (the standard library: offline), hf:NAME\\[:CONFIG]\\[/SPLIT] (streamed), or "
        ".jsonl/.json/.parquet/.txt files, folders and globs. Repeat to read several in order."),
    tokenizer: str = typer.Option("bpe:4096", "--tokenizer", help="gpt2 (tiktoken; its files must be cached offline) "
                                  "or bpe:N (a byte-level BPE with N ids trained on the source)."),
    seq_len: int = typer.Option(1024, "--seq-len", help="Tokens a model sees per sequence; rows hold seq_len+1."),
    min_tokens: Optional[str] = typer.Option(None, "--min-tokens", help="Skip articles shorter than this "
                                             "\\[default: seq_len+1]."),
    tokens: str = typer.Option("1M", "--tokens", help="Tokens to collect (K/M/B suffixes); the last row may pass it."),
    bucket_tokens: Optional[str] = typer.Option(None, "--bucket-tokens", help="Target tokens per frequency bucket "
                                                "in vocab.parquet \\[default: tokens/25]."),
    windows: str = typer.Option("first", "--windows", help="first: one row per article, its first seq_len+1 tokens "
                                "(position 0 = article start); all: every full non-overlapping window."),
    name: str = typer.Option("demo", "--name", help="Data set name: HOME/data/NAME/ (configs train on 'demo')."),
    text_field: str = typer.Option("text", "--text-field", help="Field or column holding the text (hf, json, parquet)."),
    dtype: str = typer.Option("auto", "--dtype", help="Token id type: auto (uint16 up to 65,535 ids), uint16, uint32."),
    bpe_sample: str = typer.Option("8M", "--bpe-sample", help="bpe:N trains on the source's first this many characters."),
    force: bool = typer.Option(False, "--force", help="Replace an existing data set of this name."),
    allow_short: bool = typer.Option(False, "--allow-short", help="Build with fewer tokens than --tokens if the "
                                     "source runs out."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Build HOME/data/NAME/: tokens.bin, vocab.parquet, tokenizer/ and manifest.json (atomically)."""
    from train.corpus import DataError
    from train.dataset import build_dataset

    try:
        path = build_dataset(
            home, name, source=source, tokenizer=tokenizer, seq_len=seq_len,
            min_tokens=_data_size("--min-tokens", min_tokens), tokens=_data_size("--tokens", tokens),
            bucket_tokens=_data_size("--bucket-tokens", bucket_tokens), windows=windows, force=force,
            allow_short=allow_short, text_field=text_field, progress=not quiet, dtype=dtype,
            bpe_sample_chars=_data_size("--bpe-sample", bpe_sample))
    except DataError as err:
        fail(str(err))
    typer.echo(path)


@data_app.command("info")
def data_info(
    name: str = typer.Argument("demo", help="Data set name."),
    examples: int = typer.Option(3, "--examples", help="How many sequence starts to decode."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Show a data set's manifest, its frequency buckets and a few decoded sequence starts."""
    from train.corpus import DataError
    from train.dataset import dataset_info

    try:
        typer.echo(dataset_info(home, name, n_examples=examples))
    except DataError as err:
        fail(str(err))


@data_app.command("verify")
def data_verify(name: str = typer.Argument("demo", help="Data set name."), home: Optional[Path] = HomeOption) -> None:
    """Re-check a data set: sha256 of tokens.bin, ids, vocab.parquet counts/ranks/buckets, tokenizer."""
    from train.corpus import DataError
    from train.dataset import verify_dataset

    try:
        problems = verify_dataset(home, name)
    except DataError as err:
        fail(str(err))
    if problems:
        for problem in problems:
            typer.secho(f"problem: {problem}", fg=typer.colors.RED, err=True)
        fail(f"data set {name!r} failed verification ({len(problems)} problem(s))")
    typer.echo(f"ok: {name} verified")


# --- train ---------------------------------------------------------------------------------


@app.command("train")
def train_command(
    config: Optional[Path] = typer.Option(
        None, "--config", help="TOML config (with --resume and --run: default the run's saved config.toml)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set under HOME/data/ (else the config's data.dataset)."),
    run: Optional[str] = typer.Option(
        None, "--run", "--run-name", help="Run name (else the config file's name); under torchrun write --run-name."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set optim.lr=1e-3."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its newest checkpoint."),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="Total training tokens, e.g. 500M (else train.tokens)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (else train.device)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile on CUDA (else train.compile)."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Train a config, recording every token's loss; runs under torchrun for several GPUs."""
    import json

    from lossdb.schema import check_run_name
    from train.config import ConfigError, load_config
    from train.runlock import RunBusy, lock_for
    from train.trainer import NonFiniteLoss, TrainError, run_config_path, train
    from train.workspace import resolve_home

    flags = [*overrides]
    if data is not None:
        flags.append(f"data.dataset={json.dumps(data)}")
    if tokens is not None:
        flags.append(f"train.tokens={json.dumps(tokens)}")
    if device is not None:
        flags.append(f"train.device={json.dumps(device)}")
    if compile is not None:
        flags.append(f"train.compile={str(compile).lower()}")
    if config is None:
        if not (resume and run):
            fail("--config is required (with --resume, --run NAME alone resumes the run's own config)")
        config = run_config_path(home, run)
    try:
        cfg = load_config(config, flags)
        # Rank 0 holds the run's lock (the ranks of one torchrun job share the run), so a second
        # launch of the same run, e.g. beside a sweep, is refused instead of writing it twice.
        check_run_name(run or cfg.name)
        with lock_for(resolve_home(home), run or cfg.name):
            result = train(cfg, home=home, run=run, resume=resume)
    except RunBusy as busy:
        fail(f"run {run or cfg.name} is being trained by another process ({busy})")
    except ValueError as err:  # a run name that cannot be a folder and partition value
        fail(str(err))
    except NonFiniteLoss as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    except (ConfigError, TrainError) as err:
        fail(str(err))
    if result.status == "stopped":
        raise typer.Exit(code=130)  # interrupted: the run continues with --resume
    typer.echo(f"run {result.run}: {result.tokens_trained:,} tokens in {result.steps} steps "
               f"({result.tokens_per_s:,.0f} tokens/s) -> {result.folder}")


# --- lossdb, sql, plot, report ---------------------------------------------------------------
lossdb_app = typer.Typer(no_args_is_help=True, help="The loss table: rollups and database files.")
app.add_typer(lossdb_app, name="lossdb")


@app.command()
def sql(
    query: str = typer.Argument(..., help="One read query over the views: losses, runs, vocab, position_curve, ..."),
    format: Optional[str] = typer.Option(
        None, "--format", "-f", help="table | csv | json | parquet (default: from --out's suffix, else table)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the result here instead of printing it."),
    max_rows: int = typer.Option(100, "--max-rows", help="Rows shown by --format table."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Run a read-only SQL query over the loss table's DuckDB views and print the result."""
    import lossdb
    from lossdb.query import QueryError, format_for, rich_table, run_read_query, to_csv, to_json, write_parquet

    try:
        fmt = format_for(out, format)
        result = run_read_query(lossdb.connect(home), query)
    except QueryError as error:
        fail(str(error))
    if fmt == "parquet":
        write_parquet(result, out)
    elif fmt in ("csv", "json"):
        text = to_csv(result) if fmt == "csv" else to_json(result)
        if out is None:
            typer.echo(text, nl=False)
        else:
            out.write_text(text)
    else:
        from rich.console import Console

        if out is None:
            Console().print(rich_table(result, max_rows))
        else:
            with out.open("w") as f:
                Console(file=f, width=200).print(rich_table(result, max_rows))
        if result.num_rows > max_rows:
            typer.echo(f"({max_rows} of {result.num_rows:,} rows shown; --max-rows N or --format csv for more)", err=True)
    if out is not None:
        typer.echo(f"wrote {result.num_rows:,} rows to {out}", err=True)


@lossdb_app.command("rollup")
def lossdb_rollup(
    runs: Optional[str] = typer.Option(None, "--runs", help="Comma-separated runs (default: every run)."),
    force: bool = typer.Option(False, "--force", help="Rebuild rollups that already exist."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Build the rollups (sums by position, token, step) of part files that lack them."""
    import lossdb
    from lossdb.rollup import build_missing_rollups

    names = [name.strip() for name in runs.split(",") if name.strip()] if runs else None
    try:
        report = build_missing_rollups(lossdb.resolve_home(home) / "lossdb", names, force=force)
    except ValueError as error:
        fail(str(error))
    built = ", ".join(report.runs_built) or "none"
    typer.echo(f"built rollups for {report.parts_built} of {report.parts_seen} part files (runs: {built})")


@lossdb_app.command("file")
def lossdb_file(
    out: Path = typer.Argument(..., help="The .duckdb file to write."),
    force: bool = typer.Option(False, "--force", help="Replace the file if it exists."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Write a DuckDB database file holding the views (absolute paths), for the duckdb CLI or notebooks."""
    import lossdb

    if out.exists():
        if not force:
            fail(f"{out} exists (use --force to replace it)")
        out.unlink()
    lossdb.write_database_file(home, out)
    typer.echo(f"wrote {out}: open it with `duckdb {out}` and query losses, position_curve, ...")


def _parse_tokens(option: str, value: Optional[str]) -> Optional[int]:
    """`5M` → 5_000_000 for a token-count option; a bad value is a one-line error."""
    from train.config import parse_size

    if value is None:
        return None
    try:
        tokens = parse_size(value)
    except ValueError:
        fail(f"{option} {value}: expected a token count like 5000000 or 5M")
    if tokens < 0:
        fail(f"{option} {value}: must not be negative")
    return tokens


@app.command("plot")
def plot_command(
    kind: str = typer.Argument(..., help="position | vocab | learning | first-positions | paired"),
    names: Optional[list[str]] = typer.Argument(None, help="Run names (instead of --runs); paired: A B."),
    runs: Optional[str] = typer.Option(None, "--runs", help="Comma-separated run names."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="position/vocab: plot relative to this run."),
    noise: Optional[str] = typer.Option(
        None, "--noise", help="paired: the noise floor, another seed of A's config (paired with A) or X,Y."),
    measure: str = typer.Option("ratio", "--measure", help="With --baseline: ratio or difference."),
    segment: Optional[list[int]] = typer.Option(None, "--segment", help="Only this segment (repeat for more)."),
    log_x: bool = typer.Option(False, "--log-x", help="position: log-scaled position axis."),
    window: Optional[str] = typer.Option(None, "--window", help="learning: smoothing window in tokens (default 1% of the run)."),
    start: Optional[str] = typer.Option(None, "--start", help="learning: first token shown, e.g. 300M."),
    positions: int = typer.Option(30, "--positions", help="first-positions: how many positions."),
    out: Optional[Path] = typer.Option(None, "--out", help="F.html, F.png or F.svg (default HOME/plots/KIND.html)."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Draw one analysis as a chart: HTML works offline, PNG/SVG through vl-convert."""
    import lossdb
    from analysis.charts import save_chart
    from analysis.report import build_plot

    runs = runs if runs is not None else ",".join(names or [])
    if not runs:
        fail("name the runs: --runs A,B (or plot paired A B)")
    out = out or lossdb.resolve_home(home) / "plots" / f"{kind}.html"
    if out.suffix.lower() not in (".html", ".png", ".svg"):
        fail(f"--out {out}: use a .html, .png or .svg file")
    window_tokens, start_tokens = _parse_tokens("--window", window), _parse_tokens("--start", start) or 0
    try:
        chart = build_plot(
            lossdb.connect(home), kind, runs, baseline=baseline, segments=segment, log_x=log_x, measure=measure,
            window_tokens=window_tokens, start_tokens=start_tokens, n_positions=positions, noise=noise,
        )
    except ValueError as error:  # unknown run, plot kind or measure; runs that cannot be paired
        fail(str(error))
    typer.echo(f"wrote {save_chart(chart, out)}")


@app.command("report")
def report_command(
    runs: str = typer.Option(..., "--runs", help="Comma-separated run names."),
    baseline: str = typer.Option(..., "--baseline", help="The run every other is compared with."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default HOME/reports/report.html)."),
    log_x: bool = typer.Option(False, "--log-x", help="Log-scaled position axes."),
    pair: Optional[str] = typer.Option(None, "--pair", help="A,B: add a paired per-token comparison of A and B."),
    noise: Optional[str] = typer.Option(None, "--noise", help="With --pair: its noise floor, a run paired with A, or X,Y."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Write one self-contained HTML page (works offline) with every chart and table."""
    import lossdb
    from analysis.report import build_report

    out = out or lossdb.resolve_home(home) / "reports" / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        fail(f"--out {out}: the report is an .html file")
    try:
        pair_runs = [name.strip() for name in pair.split(",")] if pair is not None else None
        path = build_report(lossdb.connect(home), runs, baseline, out, log_x=log_x, pair=pair_runs, noise=noise)
    except ValueError as error:  # unknown run, a run with no losses yet, a pair that cannot be paired
        fail(str(error))
    typer.echo(f"wrote {path}")


@app.command("compare-pair")
def compare_pair_command(
    run_a: str = typer.Argument(..., help="Run A (delta = loss B - loss A)."),
    run_b: str = typer.Argument(..., help="Run B, trained on the same data in the same order."),
    noise: Optional[str] = typer.Option(
        None, "--noise", help="The noise floor: another seed of A's config (paired with A), or X,Y."),
    segment: Optional[list[int]] = typer.Option(None, "--segment", help="Pool only this segment (repeat for more)."),
    min_count: int = typer.Option(100, "--min-count", help="Token ids listed need this many paired occurrences."),
    top: int = typer.Option(10, "--top", help="How many most improved and most regressed token ids."),
    examples: int = typer.Option(2, "--examples", help="Example contexts per listed id (0: none)."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Pair two runs token by token: mean loss difference with 95% CIs, beside the noise floor."""
    from rich.console import Console
    from rich.table import Table

    import lossdb
    from analysis import paired

    try:
        report = paired.pair_report(lossdb.connect(home), run_a, run_b, noise=noise, segments=segment,
                                    min_count=min_count, k=top, examples=examples)
    except ValueError as error:  # unknown run, runs that cannot be paired, unknown segment
        fail(str(error))
    console = Console()
    for title, frame in paired.display_tables(report):
        table = Table(title=title, title_justify="left")
        for name, dtype in frame.schema.items():
            table.add_column(name, justify="right" if dtype.is_numeric() else "left")
        for row in frame.iter_rows():
            table.add_row(*("" if v is None else str(v) for v in row))
        console.print(table)
    for note in report.result.notes + (report.noise.notes if report.noise else []):
        typer.echo(f"note: {note}")


@app.command("export")
def export_command(
    runs: Optional[str] = typer.Option(None, "--runs", help="Comma-separated runs to release (finished or failed)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The release folder to write (written atomically)."),
    verify: Optional[Path] = typer.Option(None, "--verify", help="Instead: re-check the release in this folder."),
    name: Optional[str] = typer.Option(None, "--name", help="The dataset card's title (default: --out's folder name)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
    shard_mb: int = typer.Option(512, "--shard-mb", help="Largest Parquet shard, in MiB (about)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Write a release: Parquet shards per run, runs.parquet, vocab, dataset card, SHA256SUMS; or --verify one."""
    import lossdb
    from lossdb.export import ExportError, export_release, summarize, verify_release

    if verify is not None:
        if runs or out:
            fail("--verify DIR checks a release on its own: leave out --runs and --out")
        problems = verify_release(verify)
        for problem in problems:
            typer.secho(f"problem: {problem}", fg=typer.colors.RED, err=True)
        if problems:
            fail(f"release {verify} failed verification ({len(problems)} problem(s))")
        typer.echo(f"ok: {verify} verified (checksums, schema, row counts, exactly-once)")
        return
    if not runs or out is None:
        fail("export needs --runs A,B and --out DIR (or --verify DIR)")
    try:
        result = export_release(lossdb.resolve_home(home), runs.split(","), out, name=name, force=force,
                                max_shard_bytes=shard_mb * 2**20, progress=not quiet)
    except ExportError as error:
        fail(str(error))
    for line in summarize(result):
        typer.echo(line)


# --- suites (sweep, compare) -----------------------------------------------------------------


@app.command("sweep")
def sweep_command(
    suite: Path = typer.Argument(..., help="Suite file (e.g. configs/suites/token_shift_1.toml)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per label (else the suite's seeds)."),
    only: Optional[str] = typer.Option(None, "--only", help="Only these labels: comma-separated, globs allowed (shift_*)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs with status, parameters and tokens; train nothing."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set under HOME/data/ for every run (else the configs')."),
    overrides: list[str] = typer.Option([], "--set", help="Override a key in every run: --set train.device=cpu."),
    verbose: bool = typer.Option(False, "--verbose", help="Show each run's training progress too."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Train each run on this many GPUs of this "
                                       "machine (the sweep launches torchrun per run)."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Train every run of a suite that has not finished, in order, resuming interrupted ones."""
    import json

    from train.suite import SuiteError, dry_run as dry_run_listing, load_suite, sweep

    flags = [*overrides, *([f"data.dataset={json.dumps(data)}"] if data is not None else [])]
    try:
        loaded = load_suite(suite, flags)
        members = loaded.members(seeds, only)
    except SuiteError as err:
        fail(str(err))
    if dry_run:
        typer.echo(dry_run_listing(loaded, members, home))
        return
    try:
        report = sweep(members, home, log=typer.echo, progress=verbose, nproc_per_node=nproc_per_node)
    except SuiteError as err:
        fail(str(err))
    typer.echo(f"sweep {loaded.name}: {len(report.trained)} trained, {len(report.already_finished)} finished "
               f"before, {len(report.busy)} busy elsewhere, {len(report.failed)} failed"
               + (f"; stopped in {report.stopped}" if report.stopped else ""))
    if report.stopped:
        raise typer.Exit(code=130)  # interrupted: the next sweep resumes it
    if report.failed:
        raise typer.Exit(code=1)


@app.command("compare")
def compare_command(
    suite: Optional[Path] = typer.Option(None, "--suite", help="Suite file: compare its runs, grouped by label."),
    runs: Optional[str] = typer.Option(None, "--runs", help="Or: comma-separated runs, grouped by config."),
    only: Optional[str] = typer.Option(None, "--only", help="With --suite: only these labels (comma-separated, globs)."),
    window: list[str] = typer.Option([], "--window", help="Mean loss over tokens START:END, e.g. 400M:500M (repeat for "
                                     "more) \\[default: the last fifth of the shortest run]."),
    last: Optional[str] = typer.Option(None, "--last", help="Word-start / sub-word ratio over the last N tokens "
                                       "\\[default: a fiftieth of the shortest run]."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Label that Δ is measured against "
                                            "\\[default: the suite's reference, else the base config's label]."),
    out_table: Optional[Path] = typer.Option(None, "--out-table", help="Write the table to F.md or F.csv (else print it)."),
    out_chart: Optional[Path] = typer.Option(None, "--out-chart", help="Learning curves to F.html, F.png or F.svg "
                                             "\\[default: HOME/plots/compare-NAME.html]."),
    smooth: Optional[str] = typer.Option(None, "--smooth", help="Chart: smoothing window in tokens "
                                         "\\[default: a twentieth of the shortest run]."),
    chart_start: Optional[str] = typer.Option(None, "--chart-start", help="Chart: first token shown, e.g. 300M."),
    home: Optional[Path] = HomeOption,
) -> None:
    """One table of a suite's runs (differences, parameters, window loss, word-start ratio, seeds'
    mean ± std) and their learning curves."""
    import lossdb
    from analysis import compare as cmp
    from analysis.charts import save_chart
    from analysis.curves import known_runs
    from train.config import parse_size

    if (suite is None) == (runs is None):
        fail("give either --suite FILE or --runs A,B")
    if out_table is not None and out_table.suffix.lower() not in (".md", ".csv"):
        fail(f"--out-table {out_table}: use a .md or .csv file")
    if out_chart is not None and out_chart.suffix.lower() not in (".html", ".png", ".svg"):
        fail(f"--out-chart {out_chart}: use a .html, .png or .svg file")
    windows = []
    for text in window:
        try:
            start, end = (parse_size(part) for part in text.split(":"))
        except ValueError:
            fail(f"--window {text}: expected START:END token counts, e.g. 400M:500M")
        if not 0 <= start < end:
            fail(f"--window {text}: need 0 <= START < END")
        windows.append((start, end))
    last_tokens, smooth_tokens = _parse_tokens("--last", last), _parse_tokens("--smooth", smooth)
    con = lossdb.connect(home)
    if suite is not None:
        from train.suite import SuiteError, load_suite, suite_runs

        try:
            loaded = load_suite(suite)
            entries = [cmp.Entry(*e) for e in suite_runs(loaded, known_runs(con), only)]
        except SuiteError as err:
            fail(str(err))
        name, base, reference = loaded.name, "the base config", reference or loaded.reference
    else:
        if only is not None:
            fail("--only goes with --suite")
        try:
            entries = cmp.entries_for_runs(con, runs)
        except ValueError as err:
            fail(str(err))
        name, base = "runs", f"{entries[0].run}"
    try:
        result = cmp.compare(con, entries, windows, last_tokens, reference)
    except ValueError as err:
        fail(str(err))
    table = cmp.to_markdown(result, title=f"compare: {name}", base=base)
    if out_table is None:
        typer.echo(table, nl=False)
    elif out_table.suffix.lower() == ".csv":
        out_table.parent.mkdir(parents=True, exist_ok=True)
        result.table.write_csv(out_table)
    else:
        out_table.parent.mkdir(parents=True, exist_ok=True)
        out_table.write_text(table)
    smooth_tokens = smooth_tokens or max(result.fewest_tokens // 20, 1)
    shown = [e for e in entries if e.run not in result.missing]
    chart = cmp.learning_chart_by_label(
        con, shown, smooth_tokens, _parse_tokens("--chart-start", chart_start) or 0,
        title=f"{name}: learning curves (mean over seeds; smoothed over {smooth_tokens:,} tokens)",
        reference=result.reference)
    out_chart = out_chart or lossdb.resolve_home(home) / "plots" / f"compare-{name}.html"
    written = [save_chart(chart, out_chart)] + ([out_table] if out_table is not None else [])
    typer.echo("wrote " + ", ".join(map(str, written)), err=True)


# --- demo ----------------------------------------------------------------------------------------


@app.command("demo")
def demo_command(home: Optional[Path] = HomeOption) -> None:
    """The whole story offline on the stdlib corpus: data, three tiny runs, report, charts, release."""
    from demo import run_demo
    from train.workspace import resolve_home

    run_demo(resolve_home(home))


# --- end of sections -------------------------------------------------------------------------

if __name__ == "__main__":
    app()
