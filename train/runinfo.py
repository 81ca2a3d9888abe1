"""`runs/<run>/run.json`: what a run is and how far it got (the lossdb `runs` view reads it).

Keys the `runs` view relies on: run, status, dataset, dataset_sha256, seed, tokens_trained,
n_params, n_params_non_embedding, config, started_at, finished_at. Status is `running` (also a
run that was stopped or killed and can continue with --resume), `finished` or `failed`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_run_info(run_folder: Path) -> dict | None:
    path = run_folder / "run.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_run_info(run_folder: Path, info: dict) -> None:
    """Replace run.json atomically: a reader sees the old or the new file, never half of one."""
    path = run_folder / "run.json"
    temp = run_folder / f".run.json.{os.getpid()}.tmp"
    temp.write_text(json.dumps(info, indent=2, sort_keys=False) + "\n")
    os.replace(temp, path)


def versions() -> dict:
    import numpy
    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import pyarrow

        found["pyarrow"] = pyarrow.__version__
    except ImportError:
        pass
    if torch.version.cuda:
        found["cuda"] = torch.version.cuda
    return found


def git_commit() -> dict:
    """The code's commit and whether the tree had uncommitted changes (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(dirty) if commit and dirty is not None else None}


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
