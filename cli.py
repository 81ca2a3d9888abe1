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


# --- train ---------------------------------------------------------------------------------


@app.command("train")
def train_command(
    config: Optional[Path] = typer.Option(
        None, "--config", help="TOML config (with --resume and --run: default the run's saved config.toml)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set under HOME/data/ (else the config's data.dataset)."),
    run: Optional[str] = typer.Option(None, "--run", help="Run name (else the config file's name)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set optim.lr=1e-3."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its newest checkpoint."),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="Total training tokens, e.g. 500M (else train.tokens)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (else train.device)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile on CUDA (else train.compile)."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Train a config, recording every token's loss; runs under torchrun for several GPUs."""
    import json

    from train.config import ConfigError, load_config
    from train.trainer import NonFiniteLoss, TrainError, run_config_path, train

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
        result = train(cfg, home=home, run=run, resume=resume)
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


# --- end of sections -------------------------------------------------------------------------

if __name__ == "__main__":
    app()
