"""The suite ``mtobench run`` trains: a suite file (or a suite's name under ``configs/suites``), the command line's
``--method``/``--dataset``/``--model``/``--epochs``/``--seeds`` on top, or these flags alone with the dataset's
defaults (``benchmark/catalog.py``). Nothing here imports torch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmark.catalog import DATASETS, MODELS, SUITES_DIR, suites
from benchmark.config import SuiteConfig, UsageError, load_suite_text
from benchmark.names import unknown_name

NO_FILE = "command line (no suite file)"


def suite_path(given: str) -> Path:
    """``given`` as a file, else the suite of that name under ``configs/suites``; a miss suggests the nearest."""
    path = Path(given)
    if path.is_file():
        return path
    if path.suffix == "" and (SUITES_DIR / f"{given}.yaml").is_file():
        return SUITES_DIR / f"{given}.yaml"
    message = unknown_name("suite", given, suites()).args[0]
    raise UsageError(f"{given}: no such file, and {message} (in {SUITES_DIR})")


def flag_origins(args: argparse.Namespace) -> dict[str, str]:
    """Which names the command line set, so that an error blames the flag rather than the suite file."""
    origins = {"suite": f"suite file {args.suite_file}" if args.suite_file else NO_FILE}
    for key, flag in (("dataset", "dataset"), ("model", "model"), ("methods", "method")):
        if getattr(args, flag) is not None:
            origins[key] = f"--{flag}"
    return origins


def _dataset_section(name: str) -> dict[str, Any]:
    if name not in DATASETS:
        raise UsageError(f"--dataset: {unknown_name('dataset', name, DATASETS).args[0]}")
    return {"name": name, "params": dict(DATASETS[name].params)}


def base_suite(dataset: str, name: str | None) -> dict[str, Any]:
    """A suite without a file: ``dataset``'s default params, model and training settings, seed 0, the STL runs."""
    info = DATASETS[dataset] if dataset in DATASETS else None
    section = _dataset_section(dataset)
    return {"name": name or f"quick-{dataset}", "dataset": section,
            "model": {"name": info.model, "params": dict(info.model_params)}, "train": dict(info.train),
            "methods": [], "seeds": [0], "output_dir": "runs"}


def build_suite(args: argparse.Namespace, overrides: list[str]) -> SuiteConfig:
    """The resolved suite of ``mtobench run`` (see the module docstring); errors are ``UsageError``s."""
    import yaml

    if args.suite_file:
        path = suite_path(args.suite_file)
        args.suite_file = str(path)
        source = f"suite file {path}"
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if args.name:
            data["name"] = args.name
        if args.dataset is not None:
            data["dataset"] = _dataset_section(args.dataset)
            data["model"] = base_suite(args.dataset, None)["model"]
    else:
        if args.method is None:
            raise UsageError("mtobench run needs a suite file (or a suite name: mtobench list suites), or --method "
                             "(with --dataset, default synthetic_scenes)")
        source = NO_FILE
        data = base_suite(args.dataset or "synthetic_scenes", args.name)
    if args.model is not None:
        if args.model not in MODELS:
            raise UsageError(f"--model: {unknown_name('model', args.model, MODELS).args[0]}")
        keep = isinstance(data.get("model"), dict) and data["model"].get("name") == args.model
        data["model"] = {"name": args.model, "params": data["model"].get("params", {}) if keep else {}}
    if args.method is not None:
        data["methods"] = [{"name": m} for m in args.method]
    train = data.setdefault("train", {})
    for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr")):
        if getattr(args, flag) is not None:
            train[key] = getattr(args, flag)
    if args.seeds is not None:
        data["seeds"] = args.seeds
    if args.output_dir is not None:
        data["output_dir"] = args.output_dir
    if args.leaderboard is not None:
        data["leaderboard"] = args.leaderboard
    if args.no_wandb:
        data.setdefault("logging", {})["wandb"] = "off"
    return load_suite_text(yaml.safe_dump(data, sort_keys=False), source, overrides)
