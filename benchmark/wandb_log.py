"""Weights & Biases: which mode a suite runs in, opening one W&B run per training run, and syncing offline runs.

W&B is called directly (``wandb.init`` / ``run.log``) rather than through Lightning's ``WandbLogger``: the runner
trains many runs in one process, and each must be finished (with its exit code) before the next starts, with
steps counted in batches (a whole-step method like CSO takes several optimizer steps per batch).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

WANDB_DIRNAME = "wandb"
OFFLINE_PREFIX = "offline-run-"
ENV_MODES = {"online": "online", "offline": "offline", "dryrun": "offline", "disabled": "off"}


def resolve_mode(setting: str, environ: Mapping[str, str] | None = None) -> str:
    """``offline``, ``online`` or ``off`` for the suite field ``logging.wandb`` (see ``LoggingConfig``)."""
    environ = os.environ if environ is None else environ
    if setting in ("offline", "online", "off"):
        return setting
    if setting != "auto":
        raise ValueError(f"logging.wandb={setting!r} is not one of auto, offline, online, off")
    env = environ.get("WANDB_MODE")
    if env:
        if env not in ENV_MODES:
            raise ValueError(f"environment variable WANDB_MODE={env!r} is not one of {sorted(ENV_MODES)}")
        return ENV_MODES[env]
    return "online" if environ.get("WANDB_API_KEY") else "offline"


def wandb_dir(output_dir: str | os.PathLike[str]) -> Path:
    """Where W&B writes: ``<output_dir>/wandb`` (wandb adds the last part itself)."""
    return Path(output_dir) / WANDB_DIRNAME


def open_run(mode: str, output_dir: str | os.PathLike[str], project: str, entity: str | None, group: str,
             job_type: str, name: str, config: dict[str, Any], tags: Sequence[str] = ()):
    """A new W&B run (``mode`` offline or online) writing under ``wandb_dir(output_dir)``, with ``tags``;
    console capture, system monitor, git and pip metadata off: the attached run record carries the commit and
    package versions, and the lean set-up opens and finishes a run ~4x faster (benchmark/perf/power_notes.md)."""
    import wandb

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(mode=mode, dir=str(output_dir), project=project, entity=entity, group=group,
                      job_type=job_type, name=name, config=config, tags=list(tags), reinit="create_new",
                      settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True,
                                              x_save_requirements=False, disable_git=True, save_code=False))


def attach_file(run, path: Path, name: str) -> None:
    """Copy ``path`` into the run's files (uploaded with it, also by a later ``wandb sync``)."""
    target = Path(run.dir) / name
    shutil.copyfile(path, target)
    run.save(str(target), base_path=run.dir, policy="now")


def find_offline_runs(runs_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``offline-run-*`` folders (each holding a ``.wandb`` log) anywhere below ``runs_dir``."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"runs directory {root} does not exist")
    return sorted(p for p in root.rglob(f"{OFFLINE_PREFIX}*") if p.is_dir() and any(p.glob("*.wandb")))


def sync_command(run_dirs: Sequence[Path], project: str | None = None, entity: str | None = None,
                 include_synced: bool = False, dry_run: bool = False) -> list[str]:
    """The ``wandb sync`` command line that uploads ``run_dirs`` (wandb skips runs it already synced unless
    ``include_synced``)."""
    if not run_dirs:
        raise ValueError("no offline W&B runs to sync")
    command = [sys.executable, "-m", "wandb", "sync"]
    command += ["--project", project] if project else []
    command += ["--entity", entity] if entity else []
    command += ["--include-synced"] if include_synced else []
    command += ["--dry-run"] if dry_run else []
    return command + [str(p) for p in run_dirs]


def sync(runs_dir: str | os.PathLike[str], **options: Any) -> tuple[list[str], int]:
    """Run ``wandb sync`` on the offline runs below ``runs_dir`` (``options``: those of ``sync_command``);
    return the command and its exit status."""
    found = find_offline_runs(runs_dir)
    if not found:
        raise ValueError(f"no offline W&B runs ({OFFLINE_PREFIX}*) below {runs_dir}")
    command = sync_command(found, **options)
    return command, subprocess.run(command, check=False).returncode
