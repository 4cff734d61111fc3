"""Replay of a recorded reference run through our protocol path (docs/protocols.md P1; tests/reference/README.md).

The reference side (``tests/reference/<lineage>/*.json``) was produced by the reference repository's own
trainer; this module holds what our side needs to feed it the same inputs: the initial-weight recipe, the
reference-name -> our-name map, the recorded batch order and augmentation draws, and a callback that records
per step what the reference recorded (task losses, task weights, gradient and update norms, learning rate).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from pathlib import Path

import lightning as L
import torch
from torch import nn

import datamodules.mtan_folder as mtan_folder

REFERENCE = Path(__file__).parent / "reference"


def load_reference(lineage: str, name: str) -> dict:
    return json.loads((REFERENCE / lineage / f"{name}.json").read_text())


def file_digest(path: Path) -> str:
    """sha256 of the file; of a .mat file without its 128-byte header (which holds the creation time)."""
    data = path.read_bytes()
    return hashlib.sha256(data[128:] if path.suffix == ".mat" else data).hexdigest()


def check_fixture(root: Path, fixture: dict, pattern: str = "*") -> Path:
    """``root``, once its files (``pattern``) are exactly those the reference ran on: ``fixture["sha256"]`` of a
    reference header maps each path relative to ``root`` to its :func:`file_digest`."""
    got = {str(p.relative_to(root)): file_digest(p) for p in sorted(root.rglob(pattern)) if p.is_file()}
    assert got == fixture["sha256"], f"{fixture.get('writer', 'the fixture writer')} no longer writes the fixture " \
                                     "the reference ran on"
    return root


def recipe_(named: dict[str, nn.Parameter]) -> None:
    """The seed recipe both sides apply (keyed by the *reference* parameter name): conv weights xavier-normal
    from ``torch.Generator().manual_seed(crc32(name))``, biases 0.01 N(0, 1) from the same, BN weights 1."""
    with torch.no_grad():
        for name, p in named.items():
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            if p.dim() == 4:
                rf = p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(2.0 / (p.shape[1] * rf + p.shape[0] * rf)))
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
            else:
                p.fill_(1.0)


def linear_recipe_(named: dict[str, nn.Parameter]) -> None:
    """:func:`recipe_`, with 2-d (``Linear``) weights 0.01 N(0, 1) from ``crc32(name)`` instead of 1, so that the
    heads of a classification network tell its classes apart."""
    recipe_(named)
    with torch.no_grad():
        for name, p in named.items():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode()))) * 0.01)


_MTAN_RULES = [
    (r"encoder_block\.(\d+)\.", r"trunk.enc_in.\1."),
    (r"decoder_block\.(\d+)\.", r"trunk.dec_in.\1."),
    (r"conv_block_enc\.(\d+)\.", r"trunk.enc_conv.\1."),
    (r"conv_block_dec\.(\d+)\.", r"trunk.dec_conv.\1."),
    (r"encoder_block_att\.(\d+)\.", r"enc_att_conv.\1."),
    (r"decoder_block_att\.(\d+)\.", r"dec_att_conv.\1."),
]


def mtan_name(ref_name: str, tasks: list[str]) -> str:
    """nash-mtl ``SegNetMtan`` parameter/buffer name -> ``models.segnet_mtan.SegNetMTAN`` name."""
    name = ref_name.removeprefix("segnet.")
    m = re.match(r"(encoder|decoder)_att\.(\d)\.(\d)\.(.*)", name)
    if m:
        return f"attention.{tasks[int(m[2])]}.{m[1]}.{m[3]}.{m[4]}"
    m = re.match(r"pred_task(\d)\.(.*)", name)
    if m:
        return f"heads.{tasks[int(m[1]) - 1]}.{m[2]}"
    for pattern, repl in _MTAN_RULES:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name, count=1)
    raise KeyError(f"no mapping for reference name {ref_name!r}")


def mtan_replay_loader(dm, ref: dict, monkeypatch) -> torch.utils.data.DataLoader:
    """Our training loader over the reference's batch order, with its augmentation draws replayed into our
    ``draw_scale_crop_flip`` (scale index, top, left, flip uniform, as MTAN's RandomScaleCrop draws them). A
    record cut short (``record.py``'s max steps) ends with the part of an epoch it fetched."""
    ds = dm.dataset("train", augment_seed=0)
    train = [s for s in ref["samples"] if s["split"] == "train"]
    n = len(ds)
    position = {file_id: i for i, file_id in enumerate(ds.ids)}
    keys = [[(e, position[s["index"]]) for s in train[e * n:(e + 1) * n]] for e in range(-(-len(train) // n))]
    draws = {(e, s["index"]): s["draws"] for e in range(len(keys)) for s in train[e * n:(e + 1) * n]}

    def recorded(seed, epoch, index, height, width):
        scale_index, top, left, flip = draws[(epoch, index)]
        return mtan_folder.ScaleCropFlip(mtan_folder.SCALES[scale_index], top, left, flip < 0.5)

    monkeypatch.setattr(mtan_folder, "draw_scale_crop_flip", recorded)
    return torch.utils.data.DataLoader(ds, batch_size=dm.batch_size, sampler=ReplaySampler(keys),
                                       drop_last=dm.drop_last)


class ReplaySampler(torch.utils.data.Sampler):
    """Yields the recorded ``(epoch, position)`` keys of each epoch; Lightning calls ``set_epoch``."""

    def __init__(self, keys_per_epoch: list[list[tuple[int, int]]]):
        self.keys, self.epoch = keys_per_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.keys[self.epoch])

    def __len__(self) -> int:
        return len(self.keys[self.epoch])


class StepRecorder(L.Callback):
    """Per training step: our task losses and weights (the module's logged stats), the norms of the gradients
    the optimizer applied (shared / heads), the parameter-update norm, the learning rate and the method's clip
    factor (``clip_coef``, 1 where it has none)."""

    def __init__(self, tasks: list[str]):
        self.tasks, self.steps = tasks, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.params = list(module.model.parameters())
        self.before = [p.detach().clone() for p in self.params]
        self.lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        model = module.model
        heads = {id(p) for t in self.tasks for p in model.task_parameters(t)}

        def norm(ps):
            return math.sqrt(sum(float(p.grad.double().square().sum()) for p in ps if p.grad is not None))

        stats = module.stats.stat_last
        self.steps.append({
            "losses": [stats[f"loss_{t}"] for t in self.tasks],
            "weights": [stats[f"weight_{t}"] for t in self.tasks],
            "grad_norm_shared": norm(p for p in self.params if id(p) not in heads),
            "grad_norm_heads": norm(p for p in self.params if id(p) in heads),
            "update_norm": math.sqrt(sum(float((p.detach().double() - b.double()).square().sum())
                                         for p, b in zip(self.params, self.before))),
            "lr": self.lr,
            "clip_coef": stats.get("clip_coef", 1.0),
        })
        self.before = None


def rel_diff(ours: float, ref: float) -> float:
    return abs(ours - ref) / max(abs(ref), 1e-12)


def cityscapes_recipe_predictions(b: int, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed predictions for test batch ``b`` of ``shape`` (N, 3, H, W), both sides: 7-class log-softmax of
    ``randn`` and inverse depth ``0.01 + 0.48 rand`` from ``torch.Generator().manual_seed(1000 + b)``."""
    g = torch.Generator().manual_seed(1000 + b)
    n, _, h, w = shape
    return torch.log_softmax(torch.randn(n, 7, h, w, generator=g), dim=1), 0.01 + 0.48 * torch.rand(n, 1, h, w,
                                                                                                    generator=g)
