"""Record LibMTL's NYUv2 losses and metrics (examples/nyu/utils.py) on fixed predictions over the fixture's test
split (header.json ``metrics_json``). Contains no LibMTL code: imports it from ``--libmtl-root`` (torch_geometric,
imported by LibMTL/trainer.py and unused here, stubbed).

Predictions per test batch b (batch 2, file order): ``torch.Generator().manual_seed(1000 + b)`` draws randn
segmentation logits (13 channels), then ``0.5 + 7.5 rand`` depth, then randn normals (not normalised: LibMTL's
NormalLoss / NormalMetric normalise them). The losses go through ``AbsLoss._update_loss`` / ``_average_loss`` and
the metrics through ``update_fun`` / ``score_fun``, as the trainer's ``_PerformanceMeter`` calls them.

    python record_libmtl_metrics.py --libmtl-root <LibMTL checkout> --fixture <dir> --out metrics.json
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch


def predictions(b: int, n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + b)
    return (torch.randn(n, 13, h, w, generator=g), 0.5 + 7.5 * torch.rand(n, 1, h, w, generator=g),
            torch.randn(n, 3, h, w, generator=g))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--libmtl-root", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    root = Path(args.libmtl_root)
    sys.path[:0] = [str(root / "examples" / "nyu"), str(root)]
    sys.modules.setdefault("torch_geometric", types.ModuleType("torch_geometric"))
    from create_dataset import NYUv2
    from utils import DepthLoss, DepthMetric, NormalLoss, NormalMetric, SegLoss, SegMetric

    loader = torch.utils.data.DataLoader(NYUv2(root=args.fixture, mode="test", augmentation=False),
                                         batch_size=args.batch, shuffle=False, num_workers=0)
    tasks = ["segmentation", "depth", "normal"]
    losses = {"segmentation": SegLoss(), "depth": DepthLoss(), "normal": NormalLoss()}
    metrics = {"segmentation": SegMetric(num_classes=13), "depth": DepthMetric(), "normal": NormalMetric()}
    batches = []
    for b, (image, gts) in enumerate(loader):
        preds = dict(zip(tasks, predictions(b, *image.shape[:1], *image.shape[-2:])))
        batches.append({"size": int(image.shape[0]),
                        "losses": [float(losses[t]._update_loss(preds[t], gts[t])) for t in tasks]})
        for t in tasks:
            metrics[t].update_fun(preds[t], gts[t])
    out = {"batches": batches,
           "average_losses": [float(losses[t]._average_loss()) for t in tasks],
           "scores": {t: [float(v) for v in metrics[t].score_fun()] for t in tasks},
           "metric_names": {"segmentation": ["mIoU", "pixAcc"], "depth": ["abs_err", "rel_err"],
                            "normal": ["mean", "median", "<11.25", "<22.5", "<30"]}}
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
