"""The shared-encoder LightningModule: manual optimization, with the gradient work delegated to the engine."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial

import lightning as L
import torch
from torch import Tensor, nn

from benchmark import tasks as T
from benchmark.distributed import GradSync, broadcast_generator_, no_ddp_sync
from benchmark.engine import Engine, Probe
from benchmark.grad_stats import gradient_stats
from benchmark.methods.base import Method, Needs, StepContext
from benchmark.optim import OptimConfig, make_optimizer, make_schedule
from benchmark.run_stats import RunStats
from datamodules.task_spec import TaskSpec

NAN_POLICIES = ("error", "skip")
SPLITS = ("val", "test")
TRAINING_STATE = "mtobench_training_state"


@dataclass(frozen=True)
class ModuleConfig:
    """How :class:`MTOModule` trains: the optimiser and schedule (``optim``), the engine's Jacobian path and
    ``update_every``, what a non-finite loss does (``nan_policy``: ``error``, or ``skip`` up to ``max_nan_skips``
    steps), the clipping of the shared gradient's norm, the fixed loss weights (task name -> w_t, 1 where not
    named), every how many batches a step is logged, how the metrics aggregate (``metric_options``) and after every
    how many epochs (and the last) both splits are evaluated."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    jacobian_mode: str = "auto"
    update_every: int = 1
    nan_policy: str = "error"
    max_nan_skips: int = 10
    clip_shared_grad_norm: float | None = None
    loss_weights: dict[str, float] | None = None
    log_every_n_steps: int = 0
    metric_options: T.MetricOptions | None = None
    eval_every_n_epochs: int = 1
    eval_final_epochs: int = 1

    def __post_init__(self) -> None:
        if self.eval_every_n_epochs < 1:
            raise ValueError(f"eval_every_n_epochs={self.eval_every_n_epochs} must be >= 1")
        if self.eval_final_epochs < 1:
            raise ValueError(f"eval_final_epochs={self.eval_final_epochs} must be >= 1")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy={self.nan_policy!r} is not one of {NAN_POLICIES}")
        if self.max_nan_skips < 0:
            raise ValueError(f"max_nan_skips={self.max_nan_skips} must be >= 0")

    @classmethod
    def from_train(cls, train, **fields) -> ModuleConfig:
        """The settings of a suite's ``train`` section (``benchmark.config.TrainConfig``, read by field name),
        with ``fields`` (e.g. ``update_every``, ``log_every_n_steps``) added or overriding."""
        optim = OptimConfig(**{f.name: getattr(train, f.name) for f in dataclasses.fields(OptimConfig)})
        own = {f.name: getattr(train, f.name) for f in dataclasses.fields(cls)
               if f.name != "optim" and hasattr(train, f.name)}
        return cls(optim=optim, **{**own, **fields})


class MTOModule(L.LightningModule):
    """Trains ``model`` (``encode`` + ``head(task, z)``) on ``tasks`` with ``method``, as ``config`` says; what it
    counts is in ``stats`` (``benchmark/run_stats.py``).

    Each validation pass after an evaluated epoch (every ``eval_every_n_epochs``-th and each of the last
    ``eval_final_epochs``) evaluates the validation and the test split (dataloader 0 and 1) and appends one entry
    to ``stats.history``: the metrics of both splits and the summed validation loss; the passes after other epochs
    do nothing.

    Under DDP the task losses carry the global batch's value (the mean over ranks) and a local gradient; loss
    methods rely on DDP's gradient all-reduce, every other step (gradient methods, own steps) runs with it off
    and reduces explicitly (``benchmark/distributed.py``, ``docs/ddp.md``). Floating-point buffers (BatchNorm
    statistics) are averaged after each step. Under fp16 autocast the optimizer step goes through the GradScaler;
    the steps it skips for inf/NaN gradients are counted in ``stats.amp_skipped_steps``.

    Every ``log_every_n_steps``-th batch (0: never) is a logging step: its statistics gain the per-task gradient
    norms and cosines (``benchmark.grad_stats``; their cost is kept out of ``step_times``) and are left in
    ``stats.logged_step`` for the logging callback.
    """

    def __init__(self, model: nn.Module, tasks: Sequence[TaskSpec], method: Method,
                 config: ModuleConfig | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.config = config = config if config is not None else ModuleConfig()
        self.model, self.tasks, self.method = model, list(tasks), method
        self.conditioned = bool(getattr(model, "task_bn", False))
        method.check_model(model)
        heads = [p for t in self.tasks for p in model.task_parameters(t.name)]
        self.engine = Engine(method, model.shared_parameters(), heads, config.jacobian_mode,
                             backward=self.manual_backward, update_every=config.update_every)
        if self.conditioned and self.engine.uses_rep:
            raise ValueError(f"{type(method).__name__}: grad_source={method.grad_source!r} needs one shared "
                             "representation, but a task_bn model computes one per task; use grad_source='params'")
        metric = partial(T.make_metric, options=config.metric_options)
        self.metrics = nn.ModuleDict({s: nn.ModuleDict({t.name: metric(t) for t in self.tasks}) for s in SPLITS})
        weights = config.loss_weights or {}
        self.fixed_weights = {t.name: float(weights[t.name]) for t in self.tasks if weights.get(t.name, 1.0) != 1.0}
        self.stats = RunStats()
        self.sync: GradSync | None = None
        self._val_loss = torch.zeros(())
        self._val_batches = 0

    def configure_optimizers(self):
        optim = self.config.optim
        optimizer = make_optimizer(optim, self.model, self.method)
        if optim.lr_schedule == "constant":
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        schedule = make_schedule(optim, optimizer, steps, self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def encode(self, batch: dict, task: str | None = None) -> Tensor:
        return self.model.encode(batch["image"], task) if self.conditioned else self.model.encode(batch["image"])

    def task_loss(self, batch: dict, task: TaskSpec, z: Tensor | None = None) -> Tensor:
        """One task's loss, times its fixed loss weight (``train.loss_weights``; the one place they apply); a fresh
        (task-conditioned, if the model is) forward pass unless ``z`` is given."""
        z = self.encode(batch, task.name) if z is None else z
        loss = T.task_loss(task, self.model.head(task.name, z), batch["targets"][task.name])
        return loss * self.fixed_weights[task.name] if task.name in self.fixed_weights else loss

    def task_losses(self, batch: dict, z: Tensor | None = None) -> Tensor:
        """The task losses ``[T]`` (:meth:`task_loss`), from ``z`` or from one fresh forward pass (one per task if
        conditioned)."""
        if z is None and not self.conditioned:
            z = self.encode(batch)
        return torch.stack([_widened(self.task_loss(batch, t, z)) for t in self.tasks])

    def on_fit_start(self) -> None:
        self.stats.fit_started = time.perf_counter()
        self.sync = GradSync() if self.trainer.world_size > 1 else None
        self.engine.sync = self.sync
        if self.sync is not None:
            broadcast_generator_(self.sync, self.method.generator())

    def training_step(self, batch: dict, batch_idx: int) -> None:
        T.validate_batch(self.tasks, batch)
        every, stats = self.config.log_every_n_steps, self.stats
        log = every > 0 and stats.batches % every == 0
        stats.batches += 1
        stats.logged_step = None
        start = _sync_time(self.device)
        opt = _ScalerWatch(self.optimizers(), self._scaler(), stats)
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
        losses = self._global(self.task_losses(batch, z_in))
        if not self._finite(losses):
            self._end_step(None, {})
            return
        ddp_syncs = self.engine.method.needs is Needs.LOSSES
        scale = self._loss_scale()
        with nullcontext() if ddp_syncs else no_ddp_sync(self.trainer.strategy.model):
            info = self.engine.step(self.method.transform_losses(losses), z, z_in, probe=log and not owns,
                                    scale=scale)
        clip = self.config.clip_shared_grad_norm
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.shared_parameters(), clip * scale)
        opt.step()
        if not opt.stepped:
            self._end_step(None, {})
            return
        if self.method.wants_after_step:
            self.method.after_step(losses.detach(), self._losses_after_step(batch))
        names = [t.name for t in self.tasks]
        self._end_step(start, {**{f"loss_{n}": v for n, v in zip(names, losses.detach().tolist())},
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

    def _unweighted(self, stats: dict[str, float]) -> dict[str, float]:
        """A step's statistics with their ``loss_<task>`` values (of the weighted losses) divided back."""
        if not self.fixed_weights:
            return stats
        return {k: v / self.fixed_weights[k[5:]] if k.startswith("loss_") and k[5:] in self.fixed_weights else v
                for k, v in stats.items()}

    def _global(self, losses: Tensor) -> Tensor:
        """Under DDP: the losses with the global batch's value (mean over ranks) and this rank's gradient."""
        if self.sync is None:
            return losses
        return losses - losses.detach() + self.sync.mean(losses.detach())

    def _scaler(self) -> torch.amp.GradScaler | None:
        """The fp16 GradScaler of Lightning's precision plugin, if there is one."""
        return getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None

    def _loss_scale(self) -> float:
        """The GradScaler's current scale (fp16 autocast), else 1."""
        scaler = self._scaler()
        return 1.0 if scaler is None else float(scaler.scale(torch.ones((), device=self.device)))

    def _synced_backward(self, loss: Tensor) -> None:
        """``manual_backward``, then (under DDP) every gradient averaged over ranks: an own step's reduction."""
        self.manual_backward(loss)
        if self.sync is not None:
            self.sync.mean_grads_(p for p in self.parameters() if p.requires_grad)

    def _step_context(self, batch: dict, opt) -> StepContext:
        return StepContext(model=self.model, task_names=[t.name for t in self.tasks], batch=batch, optimizer=opt,
                           losses=partial(self._fresh_losses, batch), task_loss=partial(self._fresh_task_loss, batch),
                           backward=self._synced_backward, finite=self._finite,
                           epoch=self.current_epoch, epochs=self.trainer.max_epochs)

    def _fresh_losses(self, batch: dict) -> Tensor:
        """An own step's ``ctx.losses()``: the global task losses from a fresh forward pass (under autocast)."""
        with self.trainer.precision_plugin.forward_context():
            return self._global(self.task_losses(batch))

    def _fresh_task_loss(self, batch: dict, name: str) -> Tensor:
        """An own step's ``ctx.task_loss(name)``: one task's global loss from a fresh forward pass."""
        task = next(t for t in self.tasks if t.name == name)
        with self.trainer.precision_plugin.forward_context():
            return self._global(_widened(self.task_loss(batch, task))[None])[0]

    def _end_step(self, start: float | None, stats: dict[str, float], probe: Probe | None = None) -> None:
        """Once per batch, whatever the method did: step the LR schedule, time the step (unless it was skipped,
        ``start=None``) less the time of the logging ``probe``, record its stats (losses unweighted); under DDP,
        average the buffers."""
        stats = self._unweighted(stats)
        if self.sync is not None:
            self.sync.mean_buffers_(self.model)
        if self.config.optim.lr_schedule != "constant":
            self.lr_schedulers().step()
        run = self.stats
        if start is not None:
            run.step_times.append(_sync_time(self.device) - start - (probe.seconds if probe else 0.0))
        if probe is not None and start is not None:
            stats = {**stats, **gradient_stats(probe.gramian, [t.name for t in self.tasks])}
            run.add_probe(probe.seconds, probe.source)
            run.logged_step = {**stats, "step_time": run.step_times[-1], "probe_time": probe.seconds}
        run.add_step(stats)

    def _finite(self, raw_losses: Tensor) -> bool:
        """True if every loss is finite; otherwise raise or count a skipped step, as ``nan_policy`` says."""
        if torch.isfinite(raw_losses.detach()).all():
            return True
        self._non_finite(raw_losses)
        return False

    def _non_finite(self, raw_losses: Tensor) -> None:
        bad = {t.name: float(v) for t, v in zip(self.tasks, raw_losses.detach()) if not torch.isfinite(v)}
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        if self.config.nan_policy == "error":
            exc = FloatingPointError(f"non-finite task loss at {where}: {bad} (nan_policy: skip would skip the step)")
            exc.nan_skips = self.stats.nan_skips
            raise exc
        self.stats.nan_skips += 1
        limit = self.config.max_nan_skips
        if self.stats.nan_skips > limit:
            exc = FloatingPointError(f"over max_nan_skips={limit} bad steps; last at {where}: {bad}")
            exc.nan_skips = self.stats.nan_skips
            raise exc

    @torch.no_grad()
    def _losses_after_step(self, batch: dict) -> Tensor:
        """The losses for ``after_step``: BatchNorm statistics untouched unless the method asks (FAMO's
        ``bn_update``, docs/methods.md §0.6)."""
        losses = self.task_losses(batch) if self.method.after_step_updates_bn else self._losses_without_bn_update(batch)
        return self._global(losses)

    def on_train_epoch_start(self) -> None:
        self.stats.epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

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

    @property
    def evaluated_epoch(self) -> bool:
        done = self.current_epoch + 1
        final = done > self.trainer.max_epochs - self.config.eval_final_epochs
        return final or done % self.config.eval_every_n_epochs == 0

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.evaluated_epoch:
            return
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
        if not self.evaluated_epoch:
            return
        entry: dict = {"epoch": self.current_epoch, "step": self.global_step, "lr": self.stats.epoch_lr}
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
        entry["method_stats"] = self.stats.end_epoch_stats()
        if not self.trainer.sanity_checking:
            self.stats.history.append(entry)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the run's bookkeeping and the engine's state (plain data and tensors; the method's is in its state
        dict)."""
        checkpoint[TRAINING_STATE] = {**self.stats.state_dict(), **self.engine.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore what :meth:`on_save_checkpoint` saved and note the resume (epoch and global step)."""
        state = checkpoint[TRAINING_STATE]
        self.stats.load_state_dict(state)
        self.engine.load_state_dict(state)
        self.stats.resumes.append({"epoch": checkpoint["epoch"], "global_step": checkpoint["global_step"]})


def _widened(loss: Tensor) -> Tensor:
    """A loss computed under autocast, in float32 (float32 and float64 losses are left as they are)."""
    return loss.float() if loss.dtype in (torch.float16, torch.bfloat16) else loss


class _ScalerWatch:
    """The optimizer, with ``stepped``: False after a step the fp16 GradScaler skipped (counted in ``stats``)."""

    def __init__(self, optimizer, scaler: torch.amp.GradScaler | None, stats: RunStats) -> None:
        self.optimizer, self.scaler, self.stats, self.stepped = optimizer, scaler, stats, True

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        before = None if self.scaler is None else self.scaler.get_scale()
        self.optimizer.step()
        if self.scaler is not None and self.scaler.get_scale() < before:
            self.stats.amp_skipped_steps += 1
            self.stepped = False

    def __getattr__(self, name: str):
        return getattr(self.optimizer, name)


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
