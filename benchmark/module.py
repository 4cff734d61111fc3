"""The shared-encoder LightningModule: manual optimization, with the gradient work delegated to the engine."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor, nn

from benchmark import tasks as T
from benchmark.engine import Engine
from benchmark.methods.base import Method, StepContext
from datamodules.task_spec import TaskSpec

NAN_POLICIES = ("error", "skip")
LR_SCHEDULES = ("constant", "cosine")
SPLITS = ("val", "test")


class MTOModule(L.LightningModule):
    """Trains ``model`` (``encode`` + ``head(task, z)``) on ``tasks`` with ``method``.

    Each validation pass evaluates the validation and the test split (dataloader 0 and 1) and appends one
    entry to ``history``: the metrics of both splits and the summed validation loss.
    """

    def __init__(self, model: nn.Module, tasks: Sequence[TaskSpec], method: Method, lr: float = 1e-3,
                 weight_decay: float = 0.0, jacobian_mode: str = "auto", nan_policy: str = "error",
                 max_nan_skips: int = 10, clip_shared_grad_norm: float | None = None,
                 lr_schedule: str = "constant") -> None:
        super().__init__()
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy={nan_policy!r} is not one of {NAN_POLICIES}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={lr_schedule!r} is not one of {LR_SCHEDULES}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.automatic_optimization = False
        self.model, self.tasks, self.method = model, list(tasks), method
        self.lr, self.weight_decay, self.lr_schedule = lr, weight_decay, lr_schedule
        self.nan_policy, self.max_nan_skips = nan_policy, max_nan_skips
        self.clip_shared_grad_norm = clip_shared_grad_norm
        heads = [p for t in self.tasks for p in model.task_parameters(t.name)]
        self.engine = Engine(method, model.shared_parameters(), heads, jacobian_mode, backward=self.manual_backward)
        self.metrics = nn.ModuleDict(
            {split: nn.ModuleDict({t.name: T.make_metric(t) for t in self.tasks}) for split in SPLITS}
        )
        self.history: list[dict] = []
        self.step_times: list[float] = []
        self.nan_skips = 0
        self.stat_sums: dict[str, float] = defaultdict(float)
        self.stat_last: dict[str, float] = {}
        self._val_loss = torch.zeros(())
        self._val_batches = 0

    def configure_optimizers(self):
        groups = [{"params": list(self.model.parameters()), "weight_decay": self.weight_decay}]
        method_params = [p for p in self.method.parameters() if p.requires_grad]
        if method_params:
            groups.append({"params": method_params, "weight_decay": 0.0})
        optimizer = torch.optim.Adam(groups, lr=self.lr)
        if self.lr_schedule == "constant":
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)}

    def task_losses(self, batch: dict, z: Tensor) -> Tensor:
        targets = batch["targets"]
        return torch.stack([T.task_loss(t, self.model.head(t.name, z), targets[t.name]) for t in self.tasks])

    def training_step(self, batch: dict, batch_idx: int) -> None:
        T.validate_batch(self.tasks, batch)
        start = _sync_time(self.device)
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        ctx = StepContext(self.model, [t.name for t in self.tasks], batch, opt,
                          lambda task=None: self.task_losses(batch, self.model.encode(batch["image"])),
                          self.manual_backward)
        if self.method.own_step(ctx):
            self.step_times.append(_sync_time(self.device) - start)
            self._track(self.method.stats())
            return
        z = self.model.encode(batch["image"])
        z_in = z.detach().requires_grad_() if self.engine.uses_rep else z
        raw_losses = self.task_losses(batch, z_in)
        if not torch.isfinite(raw_losses).all():
            self._non_finite(raw_losses)
            return
        info = self.engine.step(self.method.transform_losses(raw_losses), z, z_in)
        if self.clip_shared_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.shared_parameters(), self.clip_shared_grad_norm)
        opt.step()
        if self.lr_schedule != "constant":
            self.lr_schedulers().step()
        if self.method.wants_after_step:
            self.method.after_step(raw_losses.detach(), self._losses_without_bn_update(batch))
        self.step_times.append(_sync_time(self.device) - start)
        names = [t.name for t in self.tasks]
        self._track({**{f"loss_{n}": v for n, v in zip(names, raw_losses.detach().tolist())},
                     **{f"weight_{n}": w for n, w in zip(names, info.weights.tolist())},
                     "update_norm": info.update_norm, **self.method.stats()})

    def _non_finite(self, raw_losses: Tensor) -> None:
        bad = {t.name: float(v) for t, v in zip(self.tasks, raw_losses.detach()) if not torch.isfinite(v)}
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        if self.nan_policy == "error":
            raise FloatingPointError(f"non-finite task loss at {where}: {bad} (nan_policy: skip would skip the step)")
        self.nan_skips += 1
        if self.nan_skips > self.max_nan_skips:
            raise FloatingPointError(f"over max_nan_skips={self.max_nan_skips} bad steps; last at {where}: {bad}")

    @torch.no_grad()
    def _losses_without_bn_update(self, batch: dict) -> Tensor:
        """Re-evaluate the losses after the step in train mode, leaving BatchNorm running statistics untouched."""
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
        for m in bns:
            m.momentum = 0.0
        try:
            return self.task_losses(batch, self.model.encode(batch["image"]))
        finally:
            for m, (momentum, tracked) in zip(bns, saved):
                m.momentum = momentum
                m.num_batches_tracked.copy_(tracked)

    def _track(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            self.stat_sums[key] += value
            self.stat_last[key] = value

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        split = SPLITS[dataloader_idx]
        z = self.model.encode(batch["image"])
        for t in self.tasks:
            raw = self.model.head(t.name, z)
            target = batch["targets"][t.name]
            self.metrics[split][t.name].update(raw, target)
            if split == "val":
                self._val_loss = self._val_loss.to(raw.device) + T.task_loss(t, raw, target).detach()
        self._val_batches += split == "val"

    def on_validation_epoch_end(self) -> None:
        entry: dict = {"epoch": self.current_epoch, "step": self.global_step}
        for split in SPLITS:
            entry[split] = {}
            for t in self.tasks:
                metric = self.metrics[split][t.name]
                entry[split].update({f"{t.name}/{k}": float(v) for k, v in metric.compute().items()})
                metric.reset()
        entry["val_loss"] = float(self._val_loss) / max(self._val_batches, 1)
        self._val_loss, self._val_batches = torch.zeros(()), 0
        if not self.trainer.sanity_checking:
            self.history.append(entry)

    def method_summary(self) -> dict[str, dict[str, float]]:
        steps = max(len(self.step_times), 1)
        return {k: {"mean": s / steps, "last": self.stat_last[k]} for k, s in self.stat_sums.items()}


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
