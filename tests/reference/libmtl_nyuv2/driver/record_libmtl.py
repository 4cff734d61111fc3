"""Record LibMTL's NYUv2 trainer (examples/nyu) on an MTAN-format fixture (tests/reference/libmtl_nyuv2/header.json).

Contains no LibMTL code: it imports LibMTL and examples/nyu/{aspp,create_dataset,utils}.py from ``--libmtl-root``
(a checkout of median-research-group/LibMTL), builds the example's Trainer as examples/nyu/main.py does
(HPS, rep_grad False, resnet_dilated('resnet50') + DeepLabHead decoders, its losses and metrics, Adam 1e-4,
weight decay 1e-5, StepLR(100, 0.5)), and wraps its pieces to record what they compute. Changes to the run, all
outside LibMTL: CPU instead of cuda:0, pretrained=False then tests/reference_replay.recipe_ on the reference
parameter names, process_preds resizes to the fixture size (main.py hard-codes 288 x 384), num_workers 0,
train/test batch 2, dropout RNG re-seeded (1000 + k) before the k-th train-mode encoder call, torch_geometric
(imported by trainer.py, used only by bilevel methods) stubbed, torch.symeig (removed from torch) provided by
torch.linalg.eigh for Aligned_MTL; PCGrad's random.shuffle orders recorded.

    python record_libmtl.py --libmtl-root <LibMTL checkout> --fixture <dir> --method EW --epochs 5 --out EW.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[4]
DROPOUT_SEED = 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--libmtl-root", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    root = Path(args.libmtl_root)
    sys.path[:0] = [str(root / "examples" / "nyu"), str(root), str(REPO)]
    sys.modules.setdefault("torch_geometric", types.ModuleType("torch_geometric"))
    torch.symeig = lambda m, eigenvectors=True: torch.linalg.eigh(m)  # torch.symeig raises since torch 2.0

    import torch.nn.functional as F
    from aspp import DeepLabHead
    from create_dataset import NYUv2
    from LibMTL import Trainer
    from LibMTL.config import LibMTL_args, prepare_args
    from LibMTL.model import resnet_dilated
    from LibMTL.utils import set_random_seed
    from utils import DepthLoss, DepthMetric, NormalLoss, NormalMetric, SegLoss, SegMetric

    from tests.reference_replay import recipe_

    argv = ["--weighting", args.method, "--arch", "HPS", "--scheduler", "step", "--seed", str(args.seed)]
    params = LibMTL_args.parse_args(argv)
    kwargs, optim_param, scheduler_param = prepare_args(params)
    set_random_seed(params.seed)

    fetched = {"train": [], "test": []}

    class Recorded(NYUv2):
        def __getitem__(self, i):
            image, labels = super().__getitem__(i)
            fetched[self.mode].append({"index": int(self.index_list[i]),
                                       "sums": [float(image.double().sum())]
                                       + [float(labels[t].double().sum()) for t in labels]})
            return image, labels

    train_set = Recorded(root=args.fixture, mode="train", augmentation=False)  # main.py: --aug defaults to False
    test_set = Recorded(root=args.fixture, mode="test", augmentation=False)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch, shuffle=True, num_workers=0,
                                               drop_last=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=args.batch, shuffle=False, num_workers=0)
    size = tuple(train_set[0][0].shape[-2:])
    fetched["train"].clear()

    task_dict = {"segmentation": {"metrics": ["mIoU", "pixAcc"], "metrics_fn": SegMetric(num_classes=13),
                                  "loss_fn": SegLoss(), "weight": [1, 1]},
                 "depth": {"metrics": ["abs_err", "rel_err"], "metrics_fn": DepthMetric(),
                           "loss_fn": DepthLoss(), "weight": [0, 0]},
                 "normal": {"metrics": ["mean", "median", "<11.25", "<22.5", "<30"], "metrics_fn": NormalMetric(),
                            "loss_fn": NormalLoss(), "weight": [0, 0, 1, 1, 1]}}
    channels = {"segmentation": 13, "depth": 1, "normal": 3}
    decoders = torch.nn.ModuleDict({t: DeepLabHead(2048, channels[t]) for t in task_dict})

    class FixtureTrainer(Trainer):
        def process_preds(self, preds):
            for task in self.task_name:
                preds[task] = F.interpolate(preds[task], size, mode="bilinear", align_corners=True)
            return preds

    real_device = torch.device
    torch.device = lambda *a, **k: real_device("cpu")
    try:
        trainer = FixtureTrainer(task_dict=task_dict, weighting=params.weighting, architecture=params.arch,
                                 encoder_class=lambda: resnet_dilated("resnet50", pretrained=False),
                                 decoders=decoders, rep_grad=params.rep_grad, multi_input=params.multi_input,
                                 optim_param=optim_param, scheduler_param=scheduler_param, **kwargs)
    finally:
        torch.device = real_device
    model = trainer.model
    named = dict(model.named_parameters())
    recipe_({n: p for n, p in named.items() if n.startswith(("encoder.", "decoders."))})
    shared = [p for n, p in named.items() if n.startswith("encoder.")]
    heads = [p for n, p in named.items() if n.startswith("decoders.")]
    others = sorted(n for n in named if not n.startswith(("encoder.", "decoders.")))

    calls = {"encoder": 0}

    def reseed(module, inputs):
        if module.training:
            torch.manual_seed(DROPOUT_SEED + calls["encoder"])
            calls["encoder"] += 1

    model.encoder.register_forward_pre_hook(reseed)

    steps: list[dict] = []
    weighting_backward = model.backward

    def backward(losses, **kw):
        entry = {"losses": [float(v) for v in losses.detach()], "encoder_calls": calls["encoder"]}
        if params.weighting == "FAMO" and hasattr(model, "w"):
            z = torch.softmax(model.w.detach(), -1)
            d = losses.detach() - model.min_losses + 1e-8
            famo = (z / d) / (z / d).sum()
            entry["famo_logits"] = model.w.detach().tolist()
        steps_shuffles.clear()
        w = weighting_backward(losses, **kw)
        if steps_shuffles:
            entry["pcgrad_orders"] = [list(o) for o in steps_shuffles]
        entry["weights"] = None if w is None else [float(v) for v in np.asarray(w).reshape(-1)]
        if params.weighting == "FAMO":
            entry["weights"] = famo.tolist()
        if params.weighting == "IMTL":
            entry["loss_scale"] = model.loss_scale.detach().tolist()
        steps.append(entry)
        return w

    model.backward = backward
    shuffle = random.shuffle

    def recorded_shuffle(x, *a, **k):
        shuffle(x, *a, **k)
        steps_shuffles.append(list(x))

    steps_shuffles: list[list[int]] = []
    if params.weighting == "PCGrad":
        random.shuffle = recorded_shuffle
    optimizer_step = trainer.optimizer.step

    def norm(ps):
        return math.sqrt(sum(float(p.grad.double().norm()) ** 2 for p in ps if p.grad is not None))

    def step(*a, **k):
        before = [p.detach().clone() for p in named.values()]
        entry = steps[-1]
        entry["grad_norm_shared"] = norm(shared)
        entry["grad_norm_heads"] = norm(heads)
        entry["lr"] = float(trainer.optimizer.param_groups[0]["lr"])
        out = optimizer_step(*a, **k)
        entry["update_norm"] = math.sqrt(sum(float((p.detach().double() - b.double()).norm()) ** 2
                                             for p, b in zip(named.values(), before)))
        return out

    trainer.optimizer.step = step
    epochs: list[dict] = []
    display = trainer.meter.display

    def record_display(mode, epoch):
        if mode == "test":
            epochs.append({"epoch": epoch, "steps_done": len(steps),
                           "test_metrics": {t: [float(v) for v in trainer.meter.results[t]]
                                            for t in trainer.task_name},
                           "test_losses": [float(v) for v in trainer.meter.loss_item]})
        return display(mode=mode, epoch=epoch)

    trainer.meter.display = record_display
    trainer.train(train_loader, test_loader, args.epochs)

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    out = {
        "method": params.weighting,
        "argv": argv,
        "weight_args": kwargs["weight_args"],
        "optim_param": optim_param,
        "scheduler_param": scheduler_param,
        "epochs_run": args.epochs,
        "batch_size": args.batch,
        "image_size": list(size),
        "param_shapes": {n: list(p.shape) for n, p in named.items()},
        "param_count": sum(p.numel() for p in named.values()),
        "encoder_param_count": sum(p.numel() for p in shared),
        "extra_params": others,
        "buffer_names": [n for n, _ in model.named_buffers()],
        "batchnorm": {"count": len(bns), "momentum": sorted({m.momentum for m in bns}),
                      "eps": sorted({m.eps for m in bns}), "affine": sorted({m.affine for m in bns}),
                      "track_running_stats": sorted({m.track_running_stats for m in bns})},
        "samples": fetched,
        "steps": steps,
        "epochs": epochs,
        "final": {
            "param_norms": {n: float(p.detach().double().norm()) for n, p in named.items()},
            "running_mean_norm": math.sqrt(sum(float(m.running_mean.double().square().sum()) for m in bns)),
            "running_var_norm": math.sqrt(sum(float(m.running_var.double().square().sum()) for m in bns)),
            "num_batches_tracked": int(bns[0].num_batches_tracked),
            "encoder_calls": calls["encoder"],
        },
    }
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
