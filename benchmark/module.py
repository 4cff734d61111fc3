"""The shared-encoder LightningModule: manual optimization, with the gradient work delegated to the engine."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import lightning as L
import torch
from torch import Tensor, nn

from benchmark import tasks as T
from benchmark.distributed import GradSync, broadcast_generator_, no_ddp_sync
from benchmark.engine import Engine, Probe
from benchmark.grad_stats import gradient_stats
from benchmark.methods.base import Method, Needs, StepContext
from datamodules.task_spec import TaskSpec

NAN_POLICIES = ("error", "skip")
LR_SCHEDULES = ("constant", "cosine", "step", "poly")
OPTIMIZERS = ("adam", "sgd")
SPLITS = ("val", "test")
TRAINING_STATE = "mtobench_training_state"


class MTOModule(L.LightningModule):
    """Trains ``model`` (``encode`` + ``head(task, z)``) on ``tasks`` with ``method``.

    Each validation pass evaluates the validation and the test split (dataloader 0 and 1) and appends one
    entry to ``history``: the metrics of both splits and the summed validation loss.

    Under DDP the task losses carry the global batch's value (the mean over ranks) and a local gradient; loss
    methods rely on DDP's gradient all-reduce, every other step (gradient methods, own steps) runs with it off
    and reduces explicitly (``benchmark/distributed.py``, ``docs/ddp.md``). Floating-point buffers (BatchNorm
    statistics) are averaged after each step. Under fp16 autocast the optimizer step goes through the GradScaler;
    the steps it skips for inf/NaN gradients are counted in ``amp_skipped_steps``.

    Every ``log_every_n_steps``-th batch (0: never) is a logging step: its statistics gain the per-task gradient
    norms and cosines (``benchmark.grad_stats``; their cost is kept out of ``step_times``) and are left in
    ``logged_step`` for the logging callback.
    """

    def __init__(self, model: nn.Module, tasks: Sequence[TaskSpec], method: Method, lr: float = 1e-3,
                 weight_decay: float = 0.0, jacobian_mode: str = "auto", nan_policy: str = "error",
                 max_nan_skips: int = 10, clip_shared_grad_norm: float | None = None,
                 lr_schedule: str = "constant", update_every: int = 1, optimizer: str = "adam",
                 momentum: float = 0.9, lr_step_size: int = 100, lr_gamma: float = 0.5,
                 log_every_n_steps: int = 0, metric_options: T.MetricOptions | None = None) -> None:
        super().__init__()
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy={nan_policy!r} is not one of {NAN_POLICIES}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={lr_schedule!r} is not one of {LR_SCHEDULES}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r} is not one of {OPTIMIZERS}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.automatic_optimization = False
        self.model, self.tasks, self.method = model, list(tasks), method
        self.lr, self.weight_decay, self.lr_schedule = lr, weight_decay, lr_schedule
        self.optimizer_name, self.momentum = optimizer, momentum
        self.lr_step_size, self.lr_gamma = lr_step_size, lr_gamma
        self.nan_policy, self.max_nan_skips = nan_policy, max_nan_skips
        self.clip_shared_grad_norm = clip_shared_grad_norm
        self.conditioned = bool(getattr(model, "task_bn", False))
        method.check_model(model)
        heads = [p for t in self.tasks for p in model.task_parameters(t.name)]
        self.engine = Engine(method, model.shared_parameters(), heads, jacobian_mode, backward=self.manual_backward,
                             update_every=update_every, loss_scale=self._loss_scale)
        if self.conditioned and self.engine.uses_rep:
            raise ValueError(f"{type(method).__name__}: grad_source={method.grad_source!r} needs one shared "
                             "representation, but a task_bn model computes one per task; use grad_source='params'")
        self.metrics = nn.ModuleDict(
            {split: nn.ModuleDict({t.name: T.make_metric(t, metric_options) for t in self.tasks}) for split in SPLITS}
        )
        self.history: list[dict] = []
        self.step_times: list[float] = []
        self.nan_skips = 0
        self.amp_skipped_steps = 0
        self.sync: GradSync | None = None
        self.stat_sums: dict[str, float] = defaultdict(float)
        self.stat_counts: dict[str, int] = defaultdict(int)
        self.stat_last: dict[str, float] = {}
        self.epoch_stats: dict[str, list[float]] = defaultdict(list)
        self._val_loss = torch.zeros(())
        self._val_batches = 0
        self.log_every_n_steps = log_every_n_steps
        self.batches = 0
        self.logged_step: dict[str, float] | None = None
        self.probe_seconds, self.probe_steps = 0.0, 0
        self.probe_sources: set[str] = set()
        self.resumes: list[dict] = []

    def configure_optimizers(self):
        groups = [{"params": list(self.model.parameters()), "weight_decay": self.weight_decay}]
        method_params = [p for p in self.method.parameters() if p.requires_grad]
        if method_params:
            lr = {} if self.method.param_lr is None else {"lr": self.method.param_lr}
            groups.append({"params": method_params, "weight_decay": 0.0, **lr})
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum)
        else:
            optimizer = torch.optim.Adam(groups, lr=self.lr)
        if self.lr_schedule == "constant":
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        if self.lr_schedule == "cosine":
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        else:
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._epoch_factor(steps))
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def _epoch_factor(self, steps: int):
        """The per-batch LR factor of an epoch-wise schedule (``step``: StepLR; ``poly``: (1 - e/E)^0.9)."""
        epochs = self.trainer.max_epochs
        per_epoch = max(steps // epochs, 1)
        if self.lr_schedule == "step":
            return _StepFactor(per_epoch, self.lr_step_size, self.lr_gamma)
        return _PolyFactor(per_epoch, epochs)

    def encode(self, batch: dict, task: str | None = None) -> Tensor:
        return self.model.encode(batch["image"], task) if self.conditioned else self.model.encode(batch["image"])

    def task_loss(self, batch: dict, task: TaskSpec, z: Tensor | None = None) -> Tensor:
        """One task's raw loss; a fresh (task-conditioned, if the model is) forward pass unless ``z`` is given."""
        z = self.encode(batch, task.name) if z is None else z
        return T.task_loss(task, self.model.head(task.name, z), batch["targets"][task.name])

    def task_losses(self, batch: dict, z: Tensor | None = None) -> Tensor:
        """The raw task losses ``[T]``, from ``z`` or from one fresh forward pass (one per task if conditioned)."""
        if z is None and not self.conditioned:
            z = self.encode(batch)
        return torch.stack([_widened(self.task_loss(batch, t, z)) for t in self.tasks])

    def on_fit_start(self) -> None:
        self.sync = GradSync() if self.trainer.world_size > 1 else None
        self.engine.sync = self.sync
        if self.sync is not None:
            broadcast_generator_(self.sync, self.method.generator())

    def training_step(self, batch: dict, batch_idx: int) -> None:
        T.validate_batch(self.tasks, batch)
        log = self.log_every_n_steps > 0 and self.batches % self.log_every_n_steps == 0
        self.batches += 1
        self.logged_step = None
        start = _sync_time(self.device)
        opt = _ScalerWatch(self.optimizers(), self)
        opt.zero_grad(set_to_none=True)
        owns = type(self.method).own_step is not Method.own_step
        probe = self._probe_before_own_step(batch) if log and owns else None
        with no_ddp_sync(self.trainer.strategy.model), torch.autocast(self.device.type, enabled=False):
            owned = self.method.own_step(self._step_context(batch, opt))
        if owned:
            self._end_step(start if opt.stepped else None, self.method.stats() if opt.stepped else {},
                           probe if opt.stepped else None)
            return
        z = None if self.conditioned else self.encode(batch)
        z_in = z.detach().requires_grad_() if self.engine.uses_rep else z
        raw_losses = self._global(self.task_losses(batch, z_in))
        if not self._finite(raw_losses):
            self._end_step(None, {})
            return
        ddp_syncs = self.engine.method.needs is Needs.LOSSES
        with nullcontext() if ddp_syncs else no_ddp_sync(self.trainer.strategy.model):
            info = self.engine.step(self.method.transform_losses(raw_losses), z, z_in, probe=log and not owns)
        if self.clip_shared_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.shared_parameters(),
                                           self.clip_shared_grad_norm * self._loss_scale())
        opt.step()
        if not opt.stepped:
            self._end_step(None, {})
            return
        if self.method.wants_after_step:
            self.method.after_step(raw_losses.detach(), self._losses_after_step(batch))
        names = [t.name for t in self.tasks]
        self._end_step(start, {**{f"loss_{n}": v for n, v in zip(names, raw_losses.detach().tolist())},
                               **{f"weight_{n}": w for n, w in zip(names, info.weights.tolist())},
                               "update_norm": info.update_norm, **self.method.stats()},
                       probe or (self.engine.last_probe if log else None))

    def _probe_before_own_step(self, batch: dict) -> Probe:
        """The gradient Gramian for a method that owns its step, from a fresh forward pass that leaves the
        BatchNorm running statistics untouched, so training is the same with or without logging."""
        start = _sync_time(self.device)
        with torch.enable_grad(), self._frozen_bn():
            gramian = self.engine.param_gramian(self.task_losses(batch))
        return Probe(gramian, _sync_time(self.device) - start, "extra")

    def _global(self, losses: Tensor) -> Tensor:
        """Under DDP: the losses with the global batch's value (mean over ranks) and this rank's gradient."""
        if self.sync is None:
            return losses
        return losses - losses.detach() + self.sync.mean(losses.detach())

    def _loss_scale(self) -> float:
        """The GradScaler's current scale (fp16 autocast), else 1."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        return 1.0 if scaler is None else float(scaler.scale(torch.ones((), device=self.device)))

    def _synced_backward(self, loss: Tensor) -> None:
        """``manual_backward``, then (under DDP) every gradient averaged over ranks: an own step's reduction."""
        self.manual_backward(loss)
        if self.sync is not None:
            self.sync.mean_grads_(p for p in self.parameters() if p.requires_grad)

    def _step_context(self, batch: dict, opt) -> StepContext:
        by_name = {t.name: t for t in self.tasks}
        forward = self.trainer.precision_plugin.forward_context
        return StepContext(model=self.model, task_names=list(by_name), batch=batch, optimizer=opt,
                           losses=lambda: _in(forward, lambda: self._global(self.task_losses(batch))),
                           task_loss=lambda name: _in(forward, lambda: self._global(
                               _widened(self.task_loss(batch, by_name[name]))[None])[0]),
                           backward=self._synced_backward, finite=self._finite,
                           epoch=self.current_epoch, epochs=self.trainer.max_epochs)

    def _end_step(self, start: float | None, stats: dict[str, float], probe: Probe | None = None) -> None:
        """Once per batch, whatever the method did: step the LR schedule, time the step (unless it was skipped,
        ``start=None``) less the time of the logging ``probe``, record its stats; under DDP, average the buffers."""
        if self.sync is not None:
            self.sync.mean_buffers_(self.model)
        if self.lr_schedule != "constant":
            self.lr_schedulers().step()
        if start is not None:
            self.step_times.append(_sync_time(self.device) - start - (probe.seconds if probe else 0.0))
        if probe is not None and start is not None:
            stats = {**stats, **gradient_stats(probe.gramian, [t.name for t in self.tasks])}
            self.probe_seconds += probe.seconds
            self.probe_steps += 1
            self.probe_sources.add(probe.source)
            self.logged_step = {**stats, "step_time": self.step_times[-1], "probe_time": probe.seconds}
        for key, value in stats.items():
            self.stat_sums[key] += value
            self.stat_counts[key] += 1
            self.stat_last[key] = value
            self.epoch_stats[key].append(value)

    def _finite(self, raw_losses: Tensor) -> bool:
        """True if every loss is finite; otherwise raise or count a skipped step, as ``nan_policy`` says."""
        if torch.isfinite(raw_losses.detach()).all():
            return True
        self._non_finite(raw_losses)
        return False

    def _non_finite(self, raw_losses: Tensor) -> None:
        bad = {t.name: float(v) for t, v in zip(self.tasks, raw_losses.detach()) if not torch.isfinite(v)}
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        if self.nan_policy == "error":
            raise FloatingPointError(f"non-finite task loss at {where}: {bad} (nan_policy: skip would skip the step)")
        self.nan_skips += 1
        if self.nan_skips > self.max_nan_skips:
            raise FloatingPointError(f"over max_nan_skips={self.max_nan_skips} bad steps; last at {where}: {bad}")

    @torch.no_grad()
    def _losses_after_step(self, batch: dict) -> Tensor:
        """The losses for ``after_step``: BatchNorm statistics untouched unless the method asks (FAMO's
        ``bn_update``, docs/methods.md §0.6)."""
        losses = self.task_losses(batch) if self.method.after_step_updates_bn else self._losses_without_bn_update(batch)
        return self._global(losses)

    def on_train_epoch_start(self) -> None:
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self) -> None:
        self.method.on_train_epoch_end()

    @torch.no_grad()
    def _losses_without_bn_update(self, batch: dict) -> Tensor:
        """Re-evaluate the losses after the step in train mode, leaving BatchNorm running statistics untouched."""
        with self._frozen_bn():
            return self.task_losses(batch)

    @contextmanager
    def _frozen_bn(self) -> Iterator[None]:
        """Train-mode forward passes inside leave every BatchNorm's running statistics as they were."""
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
        for m in bns:
            m.momentum = 0.0
        try:
            yield
        finally:
            for m, (momentum, tracked) in zip(bns, saved):
                m.momentum = momentum
                m.num_batches_tracked.copy_(tracked)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        split = SPLITS[dataloader_idx]
        z = None if self.conditioned else self.encode(batch)
        for t in self.tasks:
            raw = self.model.head(t.name, self.encode(batch, t.name) if self.conditioned else z)
            target = batch["targets"][t.name]
            self.metrics[split][t.name].update(raw, target)
            if split == "val":
                self._val_loss = self._val_loss.to(raw.device) + T.task_loss(t, raw, target).detach()
        self._val_batches += split == "val"

    def on_validation_epoch_end(self) -> None:
        entry: dict = {"epoch": self.current_epoch, "step": self.global_step, "lr": getattr(self, "_epoch_lr", None)}
        for split in SPLITS:
            entry[split] = {}
            for t in self.tasks:
                metric = self.metrics[split][t.name]
                entry[split].update({f"{t.name}/{k}": float(v) for k, v in metric.compute().items()})
                metric.reset()
        loss_and_batches = torch.stack([self._val_loss.double().cpu(), torch.tensor(float(self._val_batches))])
        if self.sync is not None:
            loss_and_batches = self.sync.sum(loss_and_batches.to(self.device)).cpu()
        entry["val_loss"] = float(loss_and_batches[0] / loss_and_batches[1].clamp(min=1))
        self._val_loss, self._val_batches = torch.zeros(()), 0
        entry["method_stats"] = {k: sum(v) / len(v) for k, v in self.epoch_stats.items() if v}
        self.epoch_stats.clear()
        if not self.trainer.sanity_checking:
            self.history.append(entry)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the module's own training state (plain data and tensors; the method's is in its state dict)."""
        checkpoint[TRAINING_STATE] = {
            "history": self.history, "step_times": self.step_times, "nan_skips": self.nan_skips,
            "amp_skipped_steps": self.amp_skipped_steps,
            "stat_sums": dict(self.stat_sums), "stat_counts": dict(self.stat_counts), "stat_last": self.stat_last,
            "epoch_stats": dict(self.epoch_stats), "epoch_lr": getattr(self, "_epoch_lr", None),
            "engine_steps": self.engine.steps, "jacobian_mode": self.engine.resolved_mode,
            "last_weights": self.method.last_weights, "resumes": self.resumes, "batches": self.batches,
            "probe": [self.probe_seconds, self.probe_steps, sorted(self.probe_sources)],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore what :meth:`on_save_checkpoint` saved and note the resume (epoch and global step)."""
        state = checkpoint[TRAINING_STATE]
        self.history, self.step_times, self.nan_skips = state["history"], state["step_times"], state["nan_skips"]
        self.amp_skipped_steps = state["amp_skipped_steps"]
        self.stat_sums = defaultdict(float, state["stat_sums"])
        self.stat_counts = defaultdict(int, state["stat_counts"])
        self.stat_last = state["stat_last"]
        self.epoch_stats = defaultdict(list, state["epoch_stats"])
        if state["epoch_lr"] is not None:
            self._epoch_lr = state["epoch_lr"]
        self.engine.steps, self.engine.resolved_mode = state["engine_steps"], state["jacobian_mode"]
        self.method.last_weights = state["last_weights"]
        self.batches = state["batches"]
        self.probe_seconds, self.probe_steps, sources = state["probe"]
        self.probe_sources = set(sources)
        self.resumes = [*state["resumes"], {"epoch": checkpoint["epoch"], "global_step": checkpoint["global_step"]}]

    def method_summary(self) -> dict[str, dict[str, float]]:
        """Per statistic: its mean over the steps that reported it, and its last value."""
        return {k: {"mean": s / self.stat_counts[k], "last": self.stat_last[k]} for k, s in self.stat_sums.items()}


def _widened(loss: Tensor) -> Tensor:
    """A loss computed under autocast, in float32 (float32 and float64 losses are left as they are)."""
    return loss.float() if loss.dtype in (torch.float16, torch.bfloat16) else loss


def _in(context, fn):
    with context():
        return fn()


class _ScalerWatch:
    """The optimizer, with ``stepped``: False after a step the fp16 GradScaler skipped (counted on ``module``)."""

    def __init__(self, optimizer, module: MTOModule) -> None:
        self.optimizer, self.module, self.stepped = optimizer, module, True

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        scaler = getattr(self.module.trainer.precision_plugin, "scaler", None)
        before = None if scaler is None else scaler.get_scale()
        self.optimizer.step()
        if scaler is not None and scaler.get_scale() < before:
            self.module.amp_skipped_steps += 1
            self.stepped = False

    def __getattr__(self, name: str):
        return getattr(self.optimizer, name)


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _StepFactor:
    def __init__(self, per_epoch: int, step_size: int, gamma: float) -> None:
        self.per_epoch, self.step_size, self.gamma = per_epoch, step_size, gamma

    def __call__(self, step: int) -> float:
        return self.gamma ** ((step // self.per_epoch) // self.step_size)


class _PolyFactor:
    def __init__(self, per_epoch: int, epochs: int, power: float = 0.9) -> None:
        self.per_epoch, self.epochs, self.power = per_epoch, epochs, power

    def __call__(self, step: int) -> float:
        return max(1.0 - (step // self.per_epoch) / self.epochs, 0.0) ** self.power
