"""Instrumentation driver: runs SimonVandenhende/Multi-Task-Learning-PyTorch's own pieces on a fixture and writes
what they produced as JSON (tests/test_reference_mtinet.py replays it). Holds no reference code: the repository is
imported from ``--repo``.

    python run_reference.py --repo <checkout> --dataset nyud|pascal --fixture <dir> --out <dir> --mtobench <repo>

What runs, from the reference: ``utils.config.create_config`` on its ``configs/<db>/hrnet18/multi_task_baseline.yml``
(tasks and loss weights set to the CSO protocol's, see ``experiment``), ``get_model`` (HRNet-18 baseline, pretrained
off), ``get_criterion``, ``get_optimizer``, ``get_transformations``, ``get_train_dataset`` / ``get_val_dataset`` /
``get_train_dataloader`` / ``get_val_dataloader``, ``adjust_learning_rate`` and ``train_vanilla`` per epoch as its
``main.py`` loops, then ``eval_model`` (online meters) and ``save_model_predictions`` + ``eval_*_predictions``
(offline evaluation). Changed around it: the data root (``MyPath``), no download, the device (``.cuda()`` is the
identity), the resolution (``TRAIN/TEST.SCALE``), batch size, workers and epochs; compatibility aliases for the
NumPy / PyTorch names it was written against (``np.int``, ``np.float``, ``np.bool``, ``torch._six``,
``collections.Mapping``). Initial weights: ``tests.reference_replay.recipe_`` keyed by the reference names.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import collections.abc
import importlib.util
import json
import math
import os
import random
import sys
import types
from pathlib import Path

import numpy as np
import torch
import yaml

TASKS = {"nyud": ["semseg", "depth", "normals", "edge"], "pascal": ["semseg", "human_parts", "sal", "normals", "edge"]}
REFERENCE_WEIGHTS = {"nyud": {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0},
                     "pascal": {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0, "edge": 50.0}}
DB = {"nyud": ("NYUD", "NYUD_MT"), "pascal": ("PASCALContext", "PASCAL_MT")}


def shims() -> None:
    for alias, builtin in (("int", int), ("float", float)):  # removed in NumPy 1.24 (np.bool is np.bool_ in 2.x)
        setattr(np, alias, builtin)
    six = types.ModuleType("torch._six")
    six.string_classes, six.int_classes = (str, bytes), int
    sys.modules["torch._six"] = six
    collections.Mapping, collections.Sequence = collections.abc.Mapping, collections.abc.Sequence
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    import cv2
    resize = cv2.resize

    def int_dsize_resize(src, dsize, *a, **k):  # OpenCV 5 refuses 0-d tensors in dsize (the collated im_size)
        return resize(src, tuple(int(v) for v in dsize) if dsize is not None else None, *a, **k)

    cv2.resize = int_dsize_resize


def experiment(repo: Path, dataset: str, weights: str, epochs: int, batch: int, out: Path) -> tuple[Path, Path]:
    """The repository's HRNet-18 baseline config with the CSO protocol's tasks (NYUD: + normals and edges as in its
    ``mti_net+edges_normals.yml``) and the loss weights (``ew``: all 1, the protocol's EW; ``reference``: the
    repository's)."""
    db = DB[dataset][0]
    base = repo / "configs" / ("nyud" if dataset == "nyud" else "pascal") / "hrnet18" / "multi_task_baseline.yml"
    cfg = yaml.safe_load(base.read_text())
    cfg["task_dictionary"] = {f"include_{t}": True for t in TASKS[dataset]} | {"edge_w": 0.95}
    w = REFERENCE_WEIGHTS[dataset]
    cfg["loss_kwargs"]["loss_weights"] = {t: (1.0 if weights == "ew" else w[t]) for t in TASKS[dataset]}
    cfg["backbone_kwargs"]["pretrained"] = False
    cfg.update(trBatch=batch, valBatch=batch, nworkers=0, epochs=epochs, train_db_name=db, val_db_name=db)
    exp, env = out / "exp.yml", out / "env.yml"
    exp.write_text(yaml.safe_dump(cfg))
    env.write_text(yaml.safe_dump({"root_dir": str(out / "results")}))
    return env, exp


def our_name(ref: str) -> str:
    rename = {"normals": "normal", "human_parts": "parts", "sal": "saliency"}
    if ref.startswith("backbone."):
        return "encoder." + ref[len("backbone."):]
    _, task, _, rest = ref.split(".", 3)
    return f"heads.{rename.get(task, task)}.{rest}"


def tensor_stats(t: torch.Tensor, invalid) -> dict:
    t = t.double()
    valid = torch.ones_like(t, dtype=torch.bool) if invalid is None else t != invalid
    return {"count": int(valid.sum()), "sum": float(t[valid].sum()), "sq": float(t[valid].square().sum())}


def sample_record(sample: dict, tasks: list[str]) -> dict:
    rec = {"id": sample["meta"]["image"], "image": tensor_stats(sample["image"], None)}
    for t in tasks:
        rec[t] = tensor_stats(sample[t], 255.0)
    return rec


class RecordingLoader:
    """The reference DataLoader, recording the image ids of every batch it yields."""

    def __init__(self, loader, log: list):
        self.loader, self.log = loader, log

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.log.append(list(batch["meta"]["image"]))
            yield batch


def norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def fixed_predictions(b: int, shape, channels: dict) -> dict:
    """Predictions for the metric check, one generator per batch (tests/test_reference_mtinet.py builds the same)."""
    g = torch.Generator().manual_seed(2000 + b)
    n, _, h, w = shape
    return {t: torch.randn(n, c, h, w, generator=g) * (2.0 if t == "depth" else 1.0) + (2.5 if t == "depth" else 0.0)
            for t, c in channels.items()}


class FixedModel(torch.nn.Module):
    """Stands in for the network in the reference's evaluation: batch b gets ``fixed_predictions(b, ...)``."""

    def __init__(self, channels: dict):
        super().__init__()
        self.channels, self.calls = channels, 0

    def forward(self, x):
        self.calls += 1
        return fixed_predictions(self.calls - 1, x.shape, self.channels)


def main() -> None:
    ap = argparse.ArgumentParser()
    for a in ("--repo", "--fixture", "--out", "--mtobench"):
        ap.add_argument(a, type=Path, required=True)
    ap.add_argument("--dataset", choices=list(DB), required=True)
    ap.add_argument("--weights", choices=("ew", "reference"), default="ew")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the recorded runs: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shims()
    repo = args.repo.resolve()
    args.out, args.fixture, args.mtobench = args.out.resolve(), args.fixture.resolve(), args.mtobench.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    os.chdir(repo)
    sys.path.insert(0, str(repo))
    # The mtobench recipe, loaded by path: the reference's packages have no __init__.py, so mtobench's regular
    # packages of the same names (models, ...) must stay off sys.path.
    spec = importlib.util.spec_from_file_location("reference_replay", args.mtobench / "tests" / "reference_replay.py")
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    recipe_ = replay.recipe_

    import utils.mypath as mypath
    db_name, folder = DB[args.dataset]
    root = args.fixture.resolve()
    if args.dataset == "pascal":  # the release ships ImageSets/Parts/; the reference's preprocessing writes into it
        (root / folder / "ImageSets" / "Parts").mkdir(parents=True, exist_ok=True)
    mypath.MyPath.db_root_dir = staticmethod(lambda database="": str(root / folder) if database else str(root))
    import data.nyud
    import data.pascal_context
    data.nyud.NYUD_MT._download = lambda self: None
    data.pascal_context.PASCALContext._download = lambda self: None
    # NumPy 2 refuses int() of a 1 x 1 array (MATLAB scalars as scipy.io.loadmat reads them); NumPy 1 allowed it.
    data.pascal_context.int = lambda x: builtins.int(np.asarray(x).item() if isinstance(x, np.ndarray) else x)
    import data.custom_transforms as tr
    from evaluation import evaluate_utils as ev
    from train.train_utils import train_vanilla
    from utils import common_config as cc
    from utils.config import create_config

    env, exp = experiment(repo, args.dataset, args.weights, args.epochs, args.batch, args.out)
    p = create_config(str(env), str(exp))
    p.TRAIN.SCALE = p.TEST.SCALE = (args.size, args.size)
    tasks = list(p.TASKS.NAMES)

    random.seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002 (the reference draws from the global state)
    torch.manual_seed(args.seed)
    model = cc.get_model(p)
    named = dict(model.named_parameters())
    recipe_(named)
    criterion = cc.get_criterion(p)
    optimizer = cc.get_optimizer(p, model)
    train_tf, val_tf = cc.get_transformations(p)

    # The training pass uses the evaluation transforms (fixed resize, ignore regions, tensor, ImageNet
    # normalisation): our augmentation is not the reference's (see the JSON's differences).
    train_set = cc.get_train_dataset(p, val_tf)
    val_set = cc.get_val_dataset(p, val_tf)
    batches: list = []
    train_loader = RecordingLoader(cc.get_train_dataloader(p, train_set), batches)
    val_loader = cc.get_val_dataloader(p, val_set)

    steps: list = []
    heads = {id(q) for n, q in named.items() if n.startswith("decoders.")}
    forward = criterion.forward

    def recording_forward(pred, gt):
        out = forward(pred, gt)
        steps.append({"losses": [float(out[t]) for t in tasks], "total": float(out["total"])})
        return out

    criterion.forward = recording_forward
    step = optimizer.step

    def recording_step(*a, **k):
        params = list(named.values())
        before = [q.detach().clone() for q in params]
        steps[-1].update(
            lr=optimizer.param_groups[0]["lr"],
            grad_norm_shared=norm(q.grad for q in params if id(q) not in heads and q.grad is not None),
            grad_norm_heads=norm(q.grad for q in params if id(q) in heads and q.grad is not None))
        result = step(*a, **k)
        steps[-1]["update_norm"] = norm(q.detach() - b for q, b in zip(params, before))
        return result

    optimizer.step = recording_step
    for epoch in range(p["epochs"]):
        cc.adjust_learning_rate(p, optimizer, epoch)
        train_vanilla(p, train_loader, model, criterion, optimizer, epoch)
    for s, ids in zip(steps, batches, strict=True):
        s["batch"] = ids

    online = ev.eval_model(p, val_loader, model)
    ev.save_model_predictions(p, val_loader, model)
    offline = offline_eval(p, args.dataset)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    run = {
        "tasks": tasks, "weights": dict(p["loss_kwargs"]["loss_weights"]), "epochs": p["epochs"],
        "steps_per_epoch": len(train_loader), "steps": steps,
        "final": {"online": to_plain(online), "offline": to_plain(offline),
                  "running_mean_norm": norm(m.running_mean for m in bns),
                  "running_var_norm": norm(m.running_var for m in bns),
                  "num_batches_tracked": int(bns[0].num_batches_tracked),
                  "param_norms": {our_name(n): float(q.detach().double().norm()) for n, q in named.items()}},
    }
    (args.out / f"run_{args.weights}.json").write_text(json.dumps(run, indent=1))

    if args.weights == "ew":
        write_static(p, args, model, named, tasks, train_tf, val_set, tr, ev, cc)


def offline_eval(p, dataset: str) -> dict:
    from evaluation.eval_depth import eval_depth_predictions
    from evaluation.eval_human_parts import eval_human_parts_predictions
    from evaluation.eval_normals import eval_normals_predictions
    from evaluation.eval_sal import eval_sal_predictions
    from evaluation.eval_semseg import eval_semseg_predictions
    db, save = p["val_db_name"], p["save_dir"]
    out = {"semseg": eval_semseg_predictions(db, save), "normals": eval_normals_predictions(db, save)}
    if dataset == "nyud":
        out["depth"] = eval_depth_predictions(db, save)
    else:
        out["human_parts"] = eval_human_parts_predictions(db, save)
        out["sal"] = eval_sal_predictions(db, save)
    return out


def to_plain(x):
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items() if k not in ("jaccards_all_categs", "all_jaccards", "prec", "rec")}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def write_static(p, args, model, named, tasks, train_tf, val_set, tr, ev, cc) -> None:
    """Model structure, the data each transform produces, the LR schedule over the protocol's 100 epochs and the
    losses / metrics of fixed predictions."""
    from easydict import EasyDict
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    structure = {
        "param_shapes": {our_name(n): list(q.shape) for n, q in named.items()},
        "param_count": {"backbone": sum(q.numel() for n, q in named.items() if n.startswith("backbone.")),
                        **{t: sum(q.numel() for n, q in named.items() if n.startswith(f"decoders.{t}."))
                           for t in tasks}},
        "buffer_names": sorted(our_name(n) for n, _ in model.named_buffers()),
        "batchnorm": {"backbone": sorted({m.momentum for n, m in bns if n.startswith("backbone.")}),
                      "heads": sorted({m.momentum for n, m in bns if n.startswith("decoders.")}),
                      "eps": sorted({m.eps for _, m in bns}), "count": len(bns)},
    }
    ts = [t for t in train_tf.transforms if isinstance(t, tr.ScaleNRotate)][0]
    draws: list = []
    real_random = tr.random

    class Recording:
        def random(self):
            v = real_random.random()
            draws[-1].append(["random", float(v)])
            return v

        def randint(self, lo, hi):
            v = real_random.randint(lo, hi)
            draws[-1].append(["randint", int(v)])
            return v

    tr.random = Recording()
    np.random.seed(args.seed)  # noqa: NPY002 (the reference draws from the global state)
    train_aug = cc.get_train_dataset(p, train_tf)
    augmented = []
    for _ in range(3):
        for i in range(len(train_aug)):
            draws.append([])
            rec = sample_record(train_aug[i], tasks)
            rec["draws"] = draws[-1]
            augmented.append(rec)
    tr.random = real_random
    data = {
        "augmentation": {"scale_n_rotate": {"rots": list(ts.rots), "scales": list(ts.scales),
                                            "kind": type(ts.rots).__name__},
                         "flip_probability": 0.5, "order": [type(t).__name__ for t in train_tf.transforms]},
        "eval_samples": [sample_record(val_set[i], tasks) for i in range(len(val_set))],
        "train_augmented": augmented,
    }
    if args.dataset == "pascal":
        data["normals_valid_classes"] = sorted(int(c) for c in val_set.normals_valid_classes)
    lrs = []
    q = EasyDict(dict(p))
    q["epochs"] = 100
    dummy = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=p["optimizer_kwargs"]["lr"])
    for epoch in range(100):
        lrs.append(cc.adjust_learning_rate(q, dummy, epoch))
    data["lr_per_epoch_100"] = lrs

    channels = dict(p.TASKS.NUM_OUTPUT)
    criterion = cc.get_criterion(p)
    loader = cc.get_val_dataloader(p, val_set)
    batches = []
    for b, sample in enumerate(loader):
        losses = criterion(fixed_predictions(b, sample["image"].shape, channels), {t: sample[t] for t in tasks})
        batches.append({"losses": [float(losses[t]) for t in tasks]})
    online = ev.eval_model(p, loader, FixedModel(channels))
    p2 = EasyDict(dict(p))
    p2["save_dir"] = str(Path(p["save_dir"]) / "fixed")
    ev.save_model_predictions(p2, loader, FixedModel(channels))
    metrics = {"batches": batches, "online": to_plain(online), "offline": to_plain(offline_eval(p2, args.dataset)),
               "channels": channels}
    (args.out / "structure.json").write_text(json.dumps(structure, indent=1))
    (args.out / "data.json").write_text(json.dumps(data, indent=1))
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
