"""The plan of a suite: its grid of runs (method x seed, single-task baselines, sweep points) and how each run's
datamodule, model and method are built, checked before any training."""

from __future__ import annotations

import dataclasses

import torch

from benchmark import tasks as T
from benchmark.checkpointing import fingerprint
from benchmark.config import SuiteConfig, fingerprinted
from benchmark.grid import STL_METHOD, PlannedRun, method_preset, plan_runs, resolved_hparams  # noqa: F401
from benchmark.methods import Needs, create
from benchmark.methods.registry import builtin_clash
from benchmark.module import ModuleConfig, MTOModule
from benchmark.names import unknown_name
from datamodules import DATAMODULES
from models import MODELS


def create_datamodule(suite: SuiteConfig):
    if suite.dataset.name not in DATAMODULES:
        raise unknown_name("dataset", suite.dataset.name, DATAMODULES)
    cls = DATAMODULES[suite.dataset.name]
    try:
        return cls(batch_size=suite.train.batch_size, **suite.dataset.params)
    except TypeError as exc:
        raise ValueError(f"dataset {suite.dataset.name!r}: bad dataset.params {suite.dataset.params}: {exc}") from exc


def model_params(suite: SuiteConfig, overrides: dict | None = None) -> dict:
    return {**suite.model.params, **(overrides or {})}


def module_config(suite: SuiteConfig, update_every: int = 1, log_every_n_steps: int | None = None) -> ModuleConfig:
    """How the suite's runs train (:class:`ModuleConfig`): its ``train`` section, metric options and logging
    interval (``log_every_n_steps`` overrides it)."""
    every = suite.logging.log_every_n_steps if log_every_n_steps is None else log_every_n_steps
    return ModuleConfig.from_train(suite.train, update_every=update_every, log_every_n_steps=every,
                                   metric_options=T.MetricOptions(suite.dataset.metric_aggregation,
                                                                  suite.dataset.depth_clamp))


def create_model(suite: SuiteConfig, tasks: list, overrides: dict | None = None) -> torch.nn.Module:
    if suite.model.name not in MODELS:
        raise unknown_name("model", suite.model.name, MODELS)
    params = model_params(suite, overrides)
    biases = {t.name: t.output_bias for t in tasks if t.output_bias}
    if biases:
        params["head_bias"] = biases
    try:
        return MODELS[suite.model.name]({t.name: T.head_channels(t) for t in tasks}, **params)
    except TypeError as exc:
        raise ValueError(f"model {suite.model.name!r}: bad model params {params}: {exc}") from exc


def check_methods(suite: SuiteConfig, tasks: list) -> None:
    """Build every method and its model once before training, so a bad name, hyper-parameter or model override
    (or a loss weight for a task the dataset does not have) fails before any run."""
    unknown = sorted(set(suite.train.loss_weights or {}) - {t.name for t in tasks})
    if unknown:
        raise ValueError(f"suite {suite.name!r}: train.loss_weights names {unknown}, not tasks of dataset "
                         f"{suite.dataset.name!r} (its tasks: {[t.name for t in tasks]})")
    for m in suite.methods:
        clash = builtin_clash(m.name)
        if clash is not None:
            raise ValueError(f"suite {suite.name!r}: method {m.key!r}: {clash}; rename the plugin's entry point")
        try:
            method = create(m.name, len(tasks), **resolved_hparams(suite, m))
            model = create_model(suite, tasks, m.model)
            method.check_model(model)
            if m.update_every != 1 and (m.update_every < 1 or method.needs is not Needs.GRAMIAN):
                raise ValueError(f"update_every={m.update_every} must be >= 1, and > 1 only for Gramian methods "
                                 f"({m.name} needs {method.needs.value})")
            MTOModule(model, tasks, method, ModuleConfig(update_every=m.update_every))  # model-method fit
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"suite {suite.name!r}: method {m.key!r}: {exc}") from exc


NOT_FINGERPRINTED = ("train.checkpoint_every_n_batches", "train.checkpoint_every_n_epochs",
                     "dataset.params.data_dir", "dataset.params.generate_workers")
"""Settings that change where or how often files are written, never the numbers (with the output folder and the
logging, which are not part of the fingerprint at all)."""


def _flat(value, prefix: str) -> dict:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}.{key}").items()}
    return {prefix: value}


def fingerprint_fields(suite: SuiteConfig, run: PlannedRun) -> dict:
    """Everything that changes a run's numbers, flattened (``train.lr``, ``run.hparams.alpha``, ...): the run, its
    dataset and model, and the training settings, less :data:`NOT_FINGERPRINTED`."""
    config = fingerprinted(suite.to_dict())
    payload = {"run": dataclasses.asdict(run), **{part: config[part] for part in ("dataset", "model", "train")}}
    flat = {k: v for part, value in payload.items() for k, v in _flat(value, part).items()}
    return {k: v for k, v in flat.items() if k not in NOT_FINGERPRINTED}


def run_fingerprint(suite: SuiteConfig, run: PlannedRun) -> str:
    """What a checkpoint must match to be resumed, and a record to count as done: the hash of
    :func:`fingerprint_fields`."""
    return fingerprint(fingerprint_fields(suite, run))


def changed_fields(old: dict, new: dict) -> list[str]:
    """``field: old -> new`` for each fingerprinted field that differs (absent: ``<unset>``)."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys
            if old.get(k, "<unset>") != new.get(k, "<unset>")]


