"""Record FAMO's Cityscapes loss and metric functions on fixed predictions (docs/protocols.md P4, §M.2).

Usage: python record_metrics.py <FAMO work tree> <fixture root> <out.json>

Imports ``experiments/cityscapes/trainer.py`` (``calc_loss``), ``data.py`` (``Cityscapes``) and ``utils.py``
(``ConfMatrix``, ``depth_error``) from the work tree and applies them, as the trainer's test pass does, to
``tests.reference_replay.cityscapes_recipe_predictions`` over the fixture's test loader (batch 2, file order):
per batch the two masked losses and depth abs / rel error, then mIoU / pixAcc from one confusion matrix over
the split and the mean of the per-batch depth errors. No reference code is copied here.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

ref, root, out_path = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
sys.path.insert(0, str(ref))
sys.path.append(str(Path(__file__).resolve().parents[4]))

from experiments.cityscapes.data import Cityscapes  # noqa: E402
from experiments.cityscapes.trainer import calc_loss  # noqa: E402
from experiments.cityscapes.utils import ConfMatrix, depth_error  # noqa: E402

from tests.reference_replay import cityscapes_recipe_predictions  # noqa: E402

loader = torch.utils.data.DataLoader(Cityscapes(root=root, train=False), batch_size=2, shuffle=False)
conf_mat, batches = ConfMatrix(7), []
for b, (image, label, depth) in enumerate(loader):
    seg, dep = cityscapes_recipe_predictions(b, image.shape)
    label = label.long()
    losses = [float(calc_loss(seg, label, "semantic")), float(calc_loss(dep, depth, "depth"))]
    conf_mat.update(seg.argmax(1).flatten(), label.flatten())
    batches.append({"losses": losses, "metrics": list(depth_error(dep, depth))})
miou, pix_acc = conf_mat.get_metrics()
out_path.write_text(json.dumps({"batches": batches, "miou": float(miou), "pix_acc": float(pix_acc),
                                "mean_of_batch_means": np.mean([b["metrics"] for b in batches], axis=0).tolist()},
                               indent=1))
print("wrote", out_path)
