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


# --- data (article data sets) -------------------------------------------------------------
data_app = typer.Typer(no_args_is_help=True, help="Build and inspect article data sets.")
app.add_typer(data_app, name="data")


# --- train ---------------------------------------------------------------------------------


# --- lossdb, sql, plot, report ---------------------------------------------------------------
lossdb_app = typer.Typer(no_args_is_help=True, help="The loss table: rollups and database files.")
app.add_typer(lossdb_app, name="lossdb")


# --- end of sections -------------------------------------------------------------------------

if __name__ == "__main__":
    app()
