"""Run records: one JSON file per run, written atomically, with config, versions and git commit."""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import subprocess
import tempfile
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

SCHEMA_VERSION = 1
TRACKED_PACKAGES = ("mtobench", "torch", "torchvision", "lightning", "torchmetrics", "numpy", "scipy", "timm")
REPO_ROOT = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str]:
    """Python, torch's build and CUDA, the tracked packages, and every installed method plugin's package."""
    import torch

    found = {"python": platform.python_version(), "torch_build": torch.__version__, "cuda": str(torch.version.cuda)}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    for ep in entry_points(group="mtobench.methods"):
        if ep.dist is not None:
            found[ep.dist.name] = ep.dist.version
    return found


def git_state(root: Path = REPO_ROOT) -> dict[str, object]:
    """The commit of the code that produced a result, and whether the tree had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status)}


def _jsonable(value):
    """NaN and inf become null so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_json_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(_jsonable(payload), indent=1, sort_keys=True, allow_nan=False))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace``: never half-written.
    An I/O failure (disk full, permissions) leaves no temp file and raises ``OSError`` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def check_writable(folder: Path, field: str) -> None:
    """Prove a file can be written in ``folder`` (or, if it does not exist yet, in its nearest existing parent,
    which is where it would be created) without creating it; else ``OSError`` naming it and ``field``."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is not a folder")
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno, f"results folder {folder} ({field}) is not writable: {exc.strerror or exc}") from exc


def read_record(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"record {path}: cannot be read as JSON ({exc})") from exc
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"record {path}: schema_version={record.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    return record


def record_path(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / f"{run_id}.json"
