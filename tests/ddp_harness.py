"""One training step of every method, under 2-rank Lightning DDP (gloo, CPU) or in one process; used by test_ddp.

The model is a tiny SegNet whose BatchNorms stay in eval mode: its forward is then per-sample, so the global
batch's losses are exactly the mean of the ranks' (train-mode BatchNorm would normalise with per-rank batch
statistics; SyncBatchNorm, the suite's ``train.sync_batchnorm``, runs on GPUs only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch import nn

from benchmark.methods import Needs, available, create, get
from benchmark.module import ModuleConfig, MTOModule
from benchmark.optim import OptimConfig
from datamodules.task_spec import TaskSpec
from models.segnet import SegNetMTL

TASKS = [TaskSpec("semseg", "segmentation", num_classes=3), TaskSpec("depth", "depth"),
         TaskSpec("normal", "normals")]
LOCAL_BATCH, SIZE = 2, 8


@dataclass(frozen=True)
class Variant:
    name: str
    hparams: dict = field(default_factory=dict)
    steps: int = 1
    update_every: int = 1


EXTRA_VARIANTS = {"mgda@rep_batchsum": Variant("mgda", {"grad_source": "rep_batchsum"}),
                  "graddrop@rep_full": Variant("graddrop", {"grad_source": "rep_full"}),
                  "cso@phase2": Variant("cso", {"mode": "phase2"}), "cso@phase1": Variant("cso", {"mode": "phase1"}),
                  "imtl_g@reuse": Variant("imtl_g", steps=2, update_every=2),
                  "mgda_ub@reuse": Variant("mgda_ub", steps=2, update_every=2),
                  "famo@2steps": Variant("famo", steps=2), "nash_mtl@2steps": Variant("nash_mtl", steps=2)}


def variants() -> dict[str, Variant]:
    """Every built-in method with its defaults (CSO in each phase) for one step, plus the representation modes,
    reused weights (``update_every``) and second steps of stateful methods."""
    found = {name: Variant(name) for name in available() if name != "cso"}
    return {**found, **EXTRA_VARIANTS}


def is_gradient_method(name: str) -> bool:
    return get(name).needs is not Needs.LOSSES or name == "cso"


class FrozenBNSegNet(SegNetMTL):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.train()

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


def global_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    n = 2 * LOCAL_BATCH
    normals = torch.nn.functional.normalize(torch.randn(n, 3, SIZE, SIZE, generator=g), dim=1)
    return {"image": torch.randn(n, 3, SIZE, SIZE, generator=g),
            "targets": {"semseg": torch.randint(0, 3, (n, SIZE, SIZE), generator=g),
                        "depth": torch.rand(n, 1, SIZE, SIZE, generator=g) + 0.5, "normal": normals}}


def shard(batch: dict, rank: int) -> dict:
    part = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    return {"image": batch["image"][part], "targets": {k: v[part] for k, v in batch["targets"].items()}}


class _One(torch.utils.data.Dataset):
    def __init__(self, batch: dict) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        return self.batch


def train(v: Variant, batch: dict, devices: int) -> MTOModule:
    """Build the model and method from seed 0 and train ``v.steps`` SGD steps on ``batch`` (lr 1, so the first
    update is minus the gradient)."""
    torch.manual_seed(0)
    model = FrozenBNSegNet({"semseg": 3, "depth": 1, "normal": 3}, width=2, levels=1, task_bn=v.name == "cso")
    method = create(v.name, len(TASKS), **v.hparams)
    method.generator()
    config = ModuleConfig(OptimConfig(lr=1.0, optimizer="sgd", momentum=0.0), jacobian_mode="loop",
                          update_every=v.update_every)
    module = MTOModule(model, TASKS, method, config)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        max_steps=v.steps,
                        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(_One(batch), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return module


def params(module: MTOModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def worker(rank: int, port: int, out: str) -> None:
    """One DDP rank: train one step of every variant on this rank's half of the global batch; save the model."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                      LOCAL_RANK=str(rank), RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    batch = shard(global_batch(), rank)
    for label, v in variants().items():
        module = train(v, batch, devices=2)
        torch.save({"params": params(module), "bytes": module.sync.bytes},
                   Path(out) / f"{label}.rank{rank}.pt")
