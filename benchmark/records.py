"""Run records: one JSON file per run, written atomically, with config, versions and git commit; loading and
validating a folder of them; and the one reader of a record's metric descriptors (:func:`record_metric`)."""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # benchmark.tasks imports torch; the command line reads suites and records without it
    from benchmark.tasks import MetricInfo

SCHEMA_VERSION = 1
RECORD_KINDS = ("mtl", "stl")
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
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())
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


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


@dataclass(frozen=True)
class RecordMetric:
    """A metric of a record (key ``<task>/<metric>``): its :class:`MetricInfo`, its task and whether that task is
    auxiliary (shown, but scored in neither Δm, nor MR, nor the STL check)."""

    info: MetricInfo
    task: str
    auxiliary: bool = False

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def direction(self) -> str:
        return self.info.direction

    @property
    def unit(self) -> str | None:
        return self.info.unit

    @property
    def decimals(self) -> int:
        return self.info.decimals


def record_metric(key: str, entry: Mapping[str, Any], auxiliary: bool = False) -> RecordMetric:
    """The descriptor of metric ``key`` from its entry in a record's ``metrics`` (``direction``, ``unit`` and
    optionally ``task``; else the task is the key's prefix)."""
    from benchmark.tasks import MetricInfo

    task = str(entry.get("task") or key.split("/", 1)[0])
    return RecordMetric(MetricInfo(key, entry["direction"], entry.get("unit")), task, auxiliary)


def _run_name(record: Mapping[str, Any]) -> str:
    return str(record.get("run_id", "<record without run_id>"))


def metric_directions(record: Mapping[str, Any], keys: Iterable[str]) -> dict[str, str]:
    """The direction of each metric of ``keys`` as ``record`` declares it; a key it does not declare is an error."""
    metrics = record.get("metrics", {})
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise KeyError(f"run {_run_name(record)}: no direction declared for metrics {missing}")
    return {k: record_metric(k, metrics[k]).direction for k in keys}


def group_metrics(records: Sequence[Mapping[str, Any]]) -> list[RecordMetric]:
    """The metrics of the MTL records (else of all records) in first-seen order, auxiliary tasks marked; a metric
    whose direction differs between records is an error naming both runs."""
    specs: dict[str, RecordMetric] = {}
    owner: dict[str, str] = {}
    mtl = [r for r in records if r["kind"] == "mtl"]
    auxiliary = {t["name"] for r in records for t in r.get("tasks") or [] if t.get("auxiliary")}
    for record in mtl or records:
        for key, entry in record["metrics"].items():
            new = record_metric(key, entry)
            new = RecordMetric(new.info, new.task, new.task in auxiliary)
            if key in specs and specs[key].direction != new.direction:
                raise ValueError(
                    f"metric {key!r} is {specs[key].direction!r} in run {owner[key]} "
                    f"but {new.direction!r} in run {record['run_id']}"
                )
            specs.setdefault(key, new)
            owner.setdefault(key, record["run_id"])
    for record in records:
        for key, entry in record["metrics"].items():
            direction = record_metric(key, entry).direction
            if key in specs and direction != specs[key].direction:
                raise ValueError(f"metric {key!r} has direction {direction!r} in run {record['run_id']}")
    return list(specs.values())


def check_record(record: Mapping[str, Any]) -> None:
    """The fields every scored record needs; an error names the run and the field."""
    run_id = record.get("run_id", "<no run_id>")
    for key in ("run_id", "suite", "dataset", "method", "kind", "seed", "metrics", "epochs"):
        if key not in record:
            raise ValueError(f"run {run_id}: the record has no {key!r}")
    if record["kind"] not in RECORD_KINDS:
        raise ValueError(f"run {run_id}: kind {record['kind']!r} is not one of {RECORD_KINDS}")
    if record["kind"] == "stl" and not record.get("stl_task"):
        raise ValueError(f"run {run_id}: an STL record needs 'stl_task'")


def load_records(
    records_dir: str | os.PathLike[str], unscored: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """Finished records found (recursively) as ``*.json`` under ``records_dir``, outside W&B's ``wandb/`` folders,
    and notes on skipped ones; with ``unscored``, the ``diverged`` and ``failed`` ones too (the leaderboard lists
    them as not scored)."""
    root = Path(records_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"records directory {root} does not exist")
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    origin: dict[str, Path] = {}
    for path in sorted(root.rglob("*.json")):
        if "wandb" in path.relative_to(root).parts[:-1]:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot parse run record {path}: {exc}") from exc
        if not isinstance(record, dict) or "run_id" not in record:
            raise ValueError(f"{path} is not a run record (expected a JSON object with a 'run_id')")
        if record.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path}: schema_version {record.get('schema_version')!r} is not supported "
                f"(expected {SCHEMA_VERSION})"
            )
        if record.get("status") != "finished" and not (unscored and record.get("status") in ("diverged", "failed")):
            notes.append(
                f"skipped unfinished run {record['run_id']} (status {record.get('status')!r}, {path})"
            )
            continue
        if record["run_id"] in origin:
            raise ValueError(f"run {record['run_id']} appears twice: {origin[record['run_id']]} and {path}")
        origin[record["run_id"]] = path
        records.append(record)
    return records, notes
