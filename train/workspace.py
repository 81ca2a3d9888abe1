"""Where things live: one workspace folder holds data sets, runs and the loss table.

The folder is `--home DIR`, else `$CONFIGAFORMER_HOME`, else `./workspace`
(see DESIGN.md). Only `export --out` writes outside it.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "CONFIGAFORMER_HOME"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The workspace folder: the argument, else $CONFIGAFORMER_HOME, else ./workspace."""
    if home is not None:
        return Path(home)
    return Path(os.environ.get(HOME_ENV) or "workspace")


def data_dir(home: Path, dataset: str) -> Path:
    return home / "data" / dataset


def run_dir(home: Path, run: str) -> Path:
    return home / "runs" / run


def lossdb_dir(home: Path) -> Path:
    return home / "lossdb"


def losses_dir(home: Path) -> Path:
    return lossdb_dir(home) / "losses"
