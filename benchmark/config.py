"""Suite configuration: typed dataclasses parsed from YAML with jsonargparse (errors name the key and value)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentParser

from benchmark.scoring import SELECTION_RULES


@dataclass
class DatasetConfig:
    name: str = "synthetic_scenes"
    params: dict[str, Any] = field(default_factory=dict)
    metric_aggregation: Literal["global", "per_batch"] = "global"
    """Depth and normal metrics: ``global`` pools the valid pixels of the whole split (LibMTL, Vandenhende);
    ``per_batch`` averages per-batch errors over the batches (MTAN, nash-mtl, CAGrad, FAMO; docs/protocols.md
    §M.2-M.3)."""
    depth_clamp: float | None = None
    """Depth predictions <= 0 become this value before the depth metrics (Vandenhende's 1e-9, protocol P3)."""


@dataclass
class ModelConfig:
    name: str = "segnet"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = 4
    batch_size: int = 16
    lr: float = 1e-3
    lr_schedule: Literal["constant", "cosine", "step", "poly"] = "constant"
    """``step``: lr x ``lr_gamma`` every ``lr_step_size`` epochs (StepLR); ``poly``: lr (1 - epoch/epochs)^0.9;
    ``cosine``: per-batch cosine annealing to 0."""
    lr_step_size: int = 100
    lr_gamma: float = 0.5
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    """SGD momentum (``optimizer: sgd`` only)."""
    weight_decay: float = 0.0
    jacobian_mode: Literal["auto", "loop", "batched"] = "auto"
    nan_policy: Literal["error", "skip"] = "error"
    max_nan_skips: int = 10
    clip_shared_grad_norm: float | None = None
    accelerator: Literal["cpu", "cuda", "auto"] = "cpu"
    checkpoint_every_n_batches: int = 0
    """Checkpoint every this many training batches too (0: at every epoch end only); a killed run resumes from its
    last checkpoint on the next ``mtobench run``."""
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    """Autocast (``bf16-mixed``; ``16-mixed`` adds a GradScaler and needs a GPU); gradient methods always see
    unscaled float32 per-task gradients, and steps the scaler skips are counted in the record."""
    devices: int = 1
    """Processes (devices) per node of one run; > 1 trains the run with DDP (``docs/ddp.md``)."""
    num_nodes: int = 1
    strategy: Literal["auto", "ddp"] = "auto"
    """``auto``: DDP whenever ``devices * num_nodes > 1`` (each process reruns the command; rank 0 writes the
    records). ``batch_size`` is per process."""
    sync_batchnorm: bool = False
    """SyncBatchNorm under DDP (GPU only): normalise with the global batch's statistics."""


@dataclass
class MethodConfig:
    name: str
    hparams: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of ``model.params`` for this method's runs, e.g. ``{task_bn: true}`` for CSO."""
    update_every: int = 1
    """Recompute a Gramian method's weights every this many steps; in between, reuse them with one backward."""
    preset: str | None = None
    """Reproduction preset (``nashmtl``, ``libmtl``, ``cagrad``, ``official``; benchmark/methods/presets.py) whose
    hyper-parameters this method starts from; explicit ``hparams`` win. None inherits the suite's ``preset``."""

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclass
class LoggingConfig:
    wandb: Literal["auto", "offline", "online", "off"] = "auto"
    """W&B: ``auto`` is offline (files under ``<output_dir>/wandb``, no account needed) unless the environment
    says otherwise: ``WANDB_MODE=online``, or ``WANDB_API_KEY`` set without ``WANDB_MODE``, goes online;
    ``WANDB_MODE=disabled`` turns W&B off. ``offline``, ``online`` and ``off`` ignore the environment."""
    log_every_n_steps: int = 10
    """Log losses, weights, gradient norms and cosines and step time every this many batches."""
    project: str = "mtobench"
    entity: str | None = None


@dataclass
class LauncherConfig:
    """Where ``mtobench run --launcher slurm|local`` sends the grid (one submitit job per run)."""

    partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 24 * 60
    """The time limit of one run's job, in minutes."""
    array_parallelism: int = 64
    """SLURM: at most this many jobs of the array run at once (``--workers`` overrides it)."""
    folder: str = "submitit"
    """Logs and pickled jobs, below the suite's ``output_dir``."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before each job (e.g. ``module load cuda``)."""


@dataclass
class SweepConfig:
    """Fixed-weight linear scalarization runs drawing the front a method is judged against (Xin et al. 2022)."""

    points: int = 0
    """Weights per axis of the simplex grid (0: no sweep); T tasks give C(points + T - 2, T - 1) runs."""


@dataclass
class SuiteConfig:
    name: str
    methods: list[MethodConfig]
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    stl: bool = True
    selection: str = "last"
    output_dir: str = "runs"
    leaderboard: str = "leaderboard.md"
    reference_table: str | None = None
    """The published table (a key of ``reference_tables.yaml``) this suite reproduces, if any."""
    preset: str | None = None
    """Default reproduction preset for every method that sets none (see ``MethodConfig.preset``)."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    stl_baseline: str = "measured"
    """``measured`` (the suite's own single-task runs) or a key of ``baselines`` in ``reference_tables.yaml``."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def suite_parser(prog: str = "mtobench run") -> ArgumentParser:
    parser = ArgumentParser(prog=prog, exit_on_error=False, allow_abbrev=False,
                            description="Train a suite: dataset x method x seed.")
    parser.add_argument("suite_file", type=str, help="suite YAML, e.g. configs/suites/default.yaml")
    parser.add_class_arguments(SuiteConfig, "suite", help="suite fields; any can be overridden, e.g. --suite.seeds=[0]")
    return parser


def load_suite(path: str | Path, overrides: list[str] | None = None) -> SuiteConfig:
    """Parse and check a suite file; overrides are command-line style, e.g. ``["--suite.train.epochs", "1"]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file {path} does not exist")
    parser = suite_parser()
    try:
        cfg = parser.parse_args([str(path), "--suite", str(path), *(overrides or [])])
        suite: SuiteConfig = parser.instantiate(cfg).suite
    except Exception as exc:  # jsonargparse raises ArgumentError / ValueError with the key named
        raise ValueError(f"suite file {path}: {exc}") from exc
    check_suite(suite, path)
    return suite


def check_suite(suite: SuiteConfig, path: Path | str = "<suite>") -> None:
    """Range checks that types alone cannot express; each error names the file, the field and the value."""
    t = suite.train
    checks = [
        (t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1"),
        (t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1"),
        (t.lr > 0 and math.isfinite(t.lr), "train.lr", t.lr, "must be finite and > 0"),
        (t.max_nan_skips >= 0, "train.max_nan_skips", t.max_nan_skips, "must be >= 0"),
        (t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0"),
        (t.checkpoint_every_n_batches >= 0, "train.checkpoint_every_n_batches", t.checkpoint_every_n_batches,
         "must be >= 0"),
        (t.lr_step_size >= 1, "train.lr_step_size", t.lr_step_size, "must be >= 1"),
        (0 < t.lr_gamma <= 1, "train.lr_gamma", t.lr_gamma, "must be in (0, 1]"),
        (0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)"),
        (t.devices >= 1, "train.devices", t.devices, "must be >= 1"),
        (t.num_nodes >= 1, "train.num_nodes", t.num_nodes, "must be >= 1"),
        (t.precision != "16-mixed" or t.accelerator != "cpu", "train.precision", t.precision,
         "needs a GPU (fp16 autocast is not supported on CPU); use bf16-mixed or accelerator: cuda"),
        (not t.sync_batchnorm or t.accelerator != "cpu", "train.sync_batchnorm", t.sync_batchnorm,
         "needs a GPU (torch's SyncBatchNorm does not run on CPU)"),
        (t.clip_shared_grad_norm is None or t.clip_shared_grad_norm > 0, "train.clip_shared_grad_norm",
         t.clip_shared_grad_norm, "must be > 0 or null"),
        (suite.dataset.depth_clamp is None or suite.dataset.depth_clamp > 0, "dataset.depth_clamp",
         suite.dataset.depth_clamp, "must be > 0 or null"),
        (len(suite.methods) > 0, "methods", suite.methods, "must list at least one method"),
        (len(suite.seeds) > 0 and len(set(suite.seeds)) == len(suite.seeds), "seeds", suite.seeds,
         "must be a non-empty list of distinct ints"),
        (suite.selection in SELECTION_RULES, "selection", suite.selection, f"must be one of {SELECTION_RULES}"),
        (suite.logging.log_every_n_steps >= 1, "logging.log_every_n_steps", suite.logging.log_every_n_steps,
         "must be >= 1"),
        (suite.sweep.points == 0 or suite.sweep.points >= 2, "sweep.points", suite.sweep.points,
         "must be 0 (no sweep) or >= 2"),
        (suite.launcher.timeout_min >= 1, "launcher.timeout_min", suite.launcher.timeout_min, "must be >= 1"),
        (suite.launcher.gpus_per_node >= 0, "launcher.gpus_per_node", suite.launcher.gpus_per_node, "must be >= 0"),
        (suite.launcher.array_parallelism >= 1, "launcher.array_parallelism", suite.launcher.array_parallelism,
         "must be >= 1"),
    ]
    keys = [m.key for m in suite.methods]
    checks.append((len(set(keys)) == len(keys), "methods", keys, "has duplicate names; give each a distinct label"))
    for ok, key, value, why in checks:
        if not ok:
            raise ValueError(f"suite file {path}: {key}={value!r} {why}")
    if suite.stl_baseline != "measured":
        from benchmark.report.baselines import published_baseline

        try:
            published_baseline(suite.stl_baseline)
        except (KeyError, FileNotFoundError) as exc:
            raise ValueError(f"suite file {path}: stl_baseline={suite.stl_baseline!r}: {exc.args[0]}") from exc
