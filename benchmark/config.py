"""Suite configuration: typed dataclasses parsed from YAML with jsonargparse (errors name the key and value)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentParser

from benchmark.scoring import SELECT_ON, SELECTION_RULES


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
    lr_schedule: Literal["constant", "cosine", "step", "step_shifted", "poly"] = "constant"
    """``step``: lr x ``lr_gamma`` every ``lr_step_size`` epochs (StepLR); ``step_shifted``: the same from epoch
    ``lr_step_size - 1`` on (Sener & Koltun's trainer); ``poly``: lr (1 - epoch/epochs)^0.9;
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
    loss_weights: dict[str, float] | None = None
    """Fixed loss weights, task name -> w_t > 0 (tasks not named: 1): every method, own steps included, optimises
    the losses w_t L_t (MTI-Net's tuned weights, protocols P3 / P5); logged and validation losses stay unweighted."""
    accelerator: Literal["cpu", "cuda", "auto"] = "cpu"
    checkpoint_every_n_batches: int = 0
    """Checkpoint every this many training batches too (0: at epoch ends only); a killed run resumes from its
    last checkpoint on the next ``mtobench run``."""
    checkpoint_every_n_epochs: int = 1
    """Checkpoint at the end of every this many epochs (and of the last one)."""
    eval_every_n_epochs: int = 1
    """Evaluate the validation and test splits after every this many epochs and after the last one. Each
    evaluation's method statistics cover the epochs since the previous one."""
    eval_final_epochs: int = 1
    """Evaluate each of the last this many epochs too (2: the last epoch's change of the validation loss, the
    convergence check, is in every record)."""
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
class ScoringConfig:
    """What the leaderboard scores (``docs/protocols.md`` §M.6); the resolved set is written into every record."""

    metrics: list[str] | None = None
    """``<task>/<metric>`` keys Δm, Δp and MR use; None: the dataset's declared set (``SCORED_METRICS`` of its
    datamodule, e.g. NYUv2's 9), else every non-auxiliary metric."""
    higher_is_better: bool = False
    """Δm's sign: false is the Maninis / Nash-MTL form (lower is better), true the CSO / Vandenhende form."""
    select_on: str = "delta_m"
    """What ``selection: best-val`` ranks validation epochs by: ``delta_m`` or ``delta_p`` (LibMTL, DB-MTL)."""


@dataclass
class SuiteConfig:
    name: str
    methods: list[MethodConfig]
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    stl: bool = True
    stl_seeds: list[int] | None = None
    """Seeds of the single-task runs (None: ``seeds``). The STL baseline is their mean; it scales every method's
    Δm alike, so fewer STL seeds leave the paired comparisons to EW unchanged in kind (docs/protocols.md §M.7)."""
    selection: str = "last"
    output_dir: str = "runs"
    leaderboard: str | None = None
    """Where ``mtobench run`` writes the leaderboard (PNGs beside it); None: ``<output_dir>/<name>/leaderboard.md``."""
    reference_table: str | None = None
    """The published table (a key of ``reference_tables.yaml``) this suite reproduces, if any."""
    preset: str | None = None
    """Default reproduction preset for every method that sets none (see ``MethodConfig.preset``)."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    stl_baseline: str = "measured"
    """``measured`` (the suite's own single-task runs) or a key of ``baselines`` in ``reference_tables.yaml``."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


LATER_DEFAULTS = {("train", "loss_weights"): None}
"""Settings added after records were made, at the value that changes nothing: left out of the run and config
fingerprints (:func:`fingerprinted`), so records made before them still match."""


def fingerprinted(config: dict) -> dict:
    """A suite's ``to_dict()`` as fingerprinted: without the :data:`LATER_DEFAULTS` that it leaves at their value."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for (section, key), default in LATER_DEFAULTS.items():
        if isinstance(out.get(section), dict) and key in out[section] and out[section][key] == default:
            del out[section][key]
    return out


class UsageError(ValueError):
    """A mistake in what the user asked for (a flag, key, name or value); the command line exits 2 on it."""


def resolve_scoring(suite: SuiteConfig, metrics: dict[str, dict], auxiliary: list[str],
                    declared: tuple[str, ...] | None, path: Path | str = "<suite>"):
    """The suite's :class:`benchmark.scoring.ScoringSpec`: ``scoring.metrics``, else the dataset's ``declared`` set,
    else every metric of a non-auxiliary task. ``metrics``: the dataset's ``<task>/<metric>`` table; a named key it
    lacks, or one of an ``auxiliary`` task, is an error naming the file, the field and the value."""
    from benchmark.scoring import ScoringSpec

    cfg = suite.scoring
    if cfg.metrics is not None:
        keys, source, field_name = tuple(cfg.metrics), "the suite's scoring.metrics", "scoring.metrics"
    elif declared is not None:
        keys, source = tuple(declared), f"dataset {suite.dataset.name!r}'s declared set"
        field_name = f"dataset {suite.dataset.name!r} SCORED_METRICS"
    else:
        keys = tuple(k for k in metrics if k.split("/", 1)[0] not in auxiliary)
        source, field_name = "every non-auxiliary metric", "scoring.metrics"
    if not keys:
        raise ValueError(f"suite file {path}: {field_name}={list(keys)!r} must name at least one metric")
    for key in keys:
        if key not in metrics:
            raise ValueError(f"suite file {path}: {field_name}: {key!r} is not a metric of dataset "
                             f"{suite.dataset.name!r} (have {sorted(metrics)})")
        if key.split("/", 1)[0] in auxiliary:
            raise ValueError(f"suite file {path}: {field_name}: {key!r} belongs to an auxiliary task, which is "
                             "never scored")
    return ScoringSpec(keys, cfg.higher_is_better, cfg.select_on, source)


def suite_parser(prog: str = "mtobench run") -> ArgumentParser:
    parser = ArgumentParser(prog=prog, exit_on_error=False, allow_abbrev=False,
                            description="Train a suite: dataset x method x seed.")
    parser.add_argument("suite_file", type=str, help="suite YAML, e.g. configs/suites/default.yaml")
    parser.add_class_arguments(SuiteConfig, "suite", help="suite fields; any can be overridden, e.g. --suite.seeds=[0]")
    return parser


def override_keys(overrides: list[str] | None) -> set[str]:
    """The suite keys (``train.epochs``) that command-line style ``overrides`` set."""
    keys = set()
    for item in overrides or []:
        if item.startswith("--suite."):
            keys.add(item[len("--suite."):].split("=", 1)[0])
    return keys


def suite_keys(cls: type = SuiteConfig, prefix: str = "") -> dict[str, bool]:
    """Every settable key of the suite (``train.epochs``), mapped to whether it takes free sub-keys (a dict)."""
    keys: dict[str, bool] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        keys[key] = typing.get_origin(hint) is dict
        if dataclasses.is_dataclass(hint):
            keys.update(suite_keys(hint, key + "."))
    return keys


def check_override_keys(overrides: list[str] | None) -> None:
    """Each ``--suite.<key>`` of ``overrides`` must name a suite field (or a sub-key of a dict field such as
    ``dataset.params``); an unknown key names the option and the nearest keys."""
    known = suite_keys()
    for key in sorted(override_keys(overrides)):
        parts = key.split(".")
        if key in known or any(known.get(".".join(parts[:i])) for i in range(1, len(parts))):
            continue
        close = difflib.get_close_matches(key, list(known), n=2, cutoff=0.8)
        hint = f"; did you mean {', '.join(f'--suite.{c}' for c in close)}?" if close else ""
        raise UsageError(f"option --suite.{key}: unknown suite key {key!r}{hint}")


def check_yaml_keys(data: Any, source: str, cls: type = SuiteConfig, prefix: str = "") -> None:
    """Every key of a parsed suite YAML, down into each ``methods`` entry, must be a field; a misspelt key names
    the file, the key and the nearest field."""
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else f"; known keys: {', '.join(hints)}"
            raise UsageError(f"{source}: unknown key {prefix + str(key)!r}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            check_yaml_keys(value, source, hint, f"{prefix}{key}.")
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]) and \
                isinstance(value, list):
            for i, item in enumerate(value):
                check_yaml_keys(item, source, typing.get_args(hint)[0], f"{prefix}{key}[{i}].")


def load_suite(path: str | Path, overrides: list[str] | None = None) -> SuiteConfig:
    """Parse and check a suite file; overrides are command-line style, e.g. ``["--suite.train.epochs", "1"]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file {path} does not exist")
    return _parse(str(path), str(path), overrides)


def load_suite_text(text: str, source: str, overrides: list[str] | None = None) -> SuiteConfig:
    """Parse and check a suite given as YAML text; ``source`` names where it came from in errors."""
    return _parse(source, text, overrides)


def _parse(source: str, suite_arg: str, overrides: list[str] | None) -> SuiteConfig:
    check_override_keys(overrides)
    import yaml

    try:
        data = yaml.safe_load(Path(suite_arg).read_text(encoding="utf-8") if source == suite_arg else suite_arg)
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML: {exc}") from exc
    check_yaml_keys(data, source)
    parser = suite_parser()
    given = override_keys(overrides)
    try:
        cfg = parser.parse_args([source, "--suite", suite_arg, *(overrides or [])])
        suite: SuiteConfig = parser.instantiate(cfg).suite
    except Exception as exc:  # jsonargparse raises ArgumentError / ValueError with the key named
        message = " ".join(str(exc).split())
        culprit = next((k for k in sorted(given, key=len, reverse=True) if f'"suite.{k}"' in message
                        or f"suite.{k}" in message), None)
        where = f"option --suite.{culprit}" if culprit else source
        raise UsageError(f"{where}: {message}") from exc
    if suite.leaderboard is None:
        suite.leaderboard = str(Path(suite.output_dir) / suite.name / "leaderboard.md")
    check_suite(suite, source, given)
    return suite


def check_suite(suite: SuiteConfig, path: Path | str = "<suite>", given: set[str] = frozenset()) -> None:
    """Range checks that types alone cannot express; each error names the file (or the command-line option, for
    the keys in ``given``), the field and the value."""
    t = suite.train
    checks = [
        (t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1"),
        (t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1"),
        (t.lr > 0 and math.isfinite(t.lr), "train.lr", t.lr, "must be finite and > 0"),
        (t.max_nan_skips >= 0, "train.max_nan_skips", t.max_nan_skips, "must be >= 0"),
        (t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0"),
        (t.checkpoint_every_n_batches >= 0, "train.checkpoint_every_n_batches", t.checkpoint_every_n_batches,
         "must be >= 0"),
        (t.checkpoint_every_n_epochs >= 1, "train.checkpoint_every_n_epochs", t.checkpoint_every_n_epochs,
         "must be >= 1"),
        (t.eval_every_n_epochs >= 1, "train.eval_every_n_epochs", t.eval_every_n_epochs, "must be >= 1"),
        (t.eval_final_epochs >= 1, "train.eval_final_epochs", t.eval_final_epochs, "must be >= 1"),
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
        *((isinstance(w, int | float) and math.isfinite(w) and w > 0, f"train.loss_weights.{name}", w,
           "must be finite and > 0") for name, w in (t.loss_weights or {}).items()),
        (suite.dataset.depth_clamp is None or suite.dataset.depth_clamp > 0, "dataset.depth_clamp",
         suite.dataset.depth_clamp, "must be > 0 or null"),
        (len(suite.methods) > 0, "methods", suite.methods, "must list at least one method"),
        (len(suite.seeds) > 0 and len(set(suite.seeds)) == len(suite.seeds), "seeds", suite.seeds,
         "must be a non-empty list of distinct ints"),
        (suite.stl_seeds is None or (len(suite.stl_seeds) > 0 and len(set(suite.stl_seeds)) == len(suite.stl_seeds)),
         "stl_seeds", suite.stl_seeds, "must be null or a non-empty list of distinct ints"),
        (suite.selection in SELECTION_RULES, "selection", suite.selection, f"must be one of {SELECTION_RULES}"),
        (suite.scoring.select_on in SELECT_ON, "scoring.select_on", suite.scoring.select_on,
         f"must be one of {SELECT_ON}"),
        (suite.scoring.metrics is None or (len(suite.scoring.metrics) > 0 and len(set(suite.scoring.metrics))
                                           == len(suite.scoring.metrics)),
         "scoring.metrics", suite.scoring.metrics, "must be null or a non-empty list of distinct metric keys"),
        *((isinstance(k, str) and k.count("/") == 1 and all(k.split("/")), "scoring.metrics", k,
           "is not a '<task>/<metric>' key") for k in suite.scoring.metrics or []),
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
            where = f"option --suite.{key}" if key in given else f"suite file {path}"
            raise UsageError(f"{where}: {key}={value!r} {why}")
    if t.clip_shared_grad_norm is not None:
        from benchmark.methods import Method, available, get

        owners = [m.name for m in suite.methods
                  if m.name in available() and get(m.name).own_step is not Method.own_step]
        if owners:
            raise UsageError(f"suite file {path}: train.clip_shared_grad_norm={t.clip_shared_grad_norm!r} is not "
                             f"applied by methods that take their own steps ({', '.join(owners)}); set it to null")
    if suite.stl_baseline != "measured":
        from benchmark.report.baselines import published_baseline

        try:
            published_baseline(suite.stl_baseline)
        except (KeyError, FileNotFoundError) as exc:
            raise UsageError(f"suite file {path}: stl_baseline={suite.stl_baseline!r}: {exc.args[0]}") from exc
