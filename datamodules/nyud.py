"""NYUD-v2 multi-task data in the Vandenhende / MTI-Net layout (docs/data.md §4.3; docs/protocols.md P3, CSO).

Tasks: 40-class semantic segmentation (file value 0 = unlabelled -> ignore 255, x -> x - 1), depth in metres
(0 invalid), surface normals (zero vector invalid) and edges (auxiliary: trained, not scored; balanced BCE with
positive weight 0.95, Vandenhende's NYUD config). ``transforms: mtinet`` (the default) are Vandenhende's own
(:mod:`datamodules.mtinet_transforms`, verified sample by sample in tests/test_reference_mtinet.py): in training a
horizontal flip and a zoom by s in {1, 1.2, 1.5} about the centre, depth divided by s; then the bicubic resize to
``height x width`` (a copy for the 480 x 640 release). ``warp``: a random ``height x width`` crop of the scaled
image and a flip, depth not divided by s, and a bilinear resize.
"""

from __future__ import annotations

import numpy as np
import torch

from datamodules.dense_base import DenseDataModule
from datamodules.dense_io import (
    affine,
    check_float,
    check_shape,
    check_values,
    read_npy,
    read_png,
    read_rgb,
    require_files,
    resolve_root,
)
from datamodules.task_spec import TaskSpec

ARCHIVE = ("the Google Drive file 14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw "
           "(https://drive.google.com/file/d/14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw/view), named by "
           "SimonVandenhende/Multi-Task-Learning-PyTorch")
LAYOUT = """  <root>/NYUD_MT/images/<id>.jpg          RGB
  <root>/NYUD_MT/gt_sets/{train,val}.txt   795 / 654 ids, one per line
  <root>/NYUD_MT/segmentation/<id>.png     uint8 (H, W): 0 unlabelled, 1..40
  <root>/NYUD_MT/depth/<id>.npy            float (H, W) metres, 0 invalid
  <root>/NYUD_MT/normals/<id>.npy          float (H, W, 3), zero vector invalid
  <root>/NYUD_MT/edge/<id>.npy             (H, W) in {0, 1}"""
ENV = "MTOBENCH_NYUD"
IGNORE = 255
NUM_CLASSES = 40
SCALES = (1.0, 1.2, 1.5)
AUGMENTATION = {"mtinet": "mtinet: flip, zoom {1, 1.2, 1.5} about the centre (OpenCV), depth / scale",
                "warp": "warp: scale {1, 1.2, 1.5}, random crop, horizontal flip"}
"""``describe()``'s augmentation, per ``transforms``."""
NORMAL_LENGTH_TOLERANCE = 1.05
TYPICAL_DEPTH = 2.5
"""Metres; where the depth head's bias starts (NYUD indoor scenes, about 0.5-10 m)."""


class NYUDDataModule(DenseDataModule):
    """NYUD-v2 (795 train / 654 val = test images) with semseg, depth, normal and edge (auxiliary) tasks."""

    NAME = "nyud"
    SCORED_METRICS = ("depth/rmse", "semseg/miou", "normal/normal_mean")
    """CSO's Δm set, one metric per task (docs/protocols.md P3); CSO's sign is the protocol's ``scoring``."""
    SPLIT_FILES = {"train": "gt_sets/train.txt", "val": "gt_sets/val.txt"}
    EXPECTED_SIZES = {"train": 795, "val": 654}
    ALL_TASKS = (
        TaskSpec("semseg", "segmentation", num_classes=NUM_CLASSES, ignore_index=IGNORE),
        TaskSpec("depth", "depth", output_bias=TYPICAL_DEPTH),
        TaskSpec("normal", "normals"),
        TaskSpec("edge", "edges", ignore_index=IGNORE, pos_weight=0.95, auxiliary=True),
    )
    FOLDERS = {"semseg": ("segmentation", ".png"), "depth": ("depth", ".npy"), "normal": ("normals", ".npy"),
               "edge": ("edge", ".npy")}

    def __init__(self, root: str | None = None, height: int = 480, width: int = 640, batch_size: int = 8,
                 num_workers: int = 0, strict_sizes: bool = True, val_size: int = 0,
                 tasks: list[str] | None = None, augment: bool = True, normal_loss: str = "cosine",
                 transforms: str = "mtinet") -> None:
        super().__init__(root, height, width, batch_size, num_workers, strict_sizes, val_size, tasks, augment,
                         transforms)
        self._set_normal_loss(normal_loss)
        self.save_hyperparameters()

    def _find_root(self):
        return resolve_root(self.root_param, ENV, "NYUD_MT", "gt_sets", "nyud", ARCHIVE, LAYOUT)

    def _path(self, folder: str, item: str, ext: str):
        return self.root / folder / f"{item}{ext}"

    def _check_files(self, split: str, ids: list[str]) -> None:
        require_files([self._path("images", i, ".jpg") for i in ids], "nyud", "image")
        for t in self.tasks:
            folder, ext = self.FOLDERS[t.name]
            require_files([self._path(folder, i, ext) for i in ids], "nyud", t.name)

    def _load(self, item: str) -> tuple[np.ndarray, dict]:
        """Read and validate one sample; errors name the file, the field and the value."""
        image = read_rgb(self._path("images", item, ".jpg"))
        hw = image.shape[:2]
        targets = {}
        for t in self.tasks:
            folder, ext = self.FOLDERS[t.name]
            path = self._path(folder, item, ext)
            if t.name == "semseg":
                raw = read_png(path, "semseg")
                check_shape(raw, path, "semseg", hw)
                check_values(raw, path, "semseg", f"[0, {NUM_CLASSES}]", raw <= NUM_CLASSES)
                targets["semseg"] = (np.where(raw == 0, IGNORE, raw.astype(np.int64) - 1), t.kind, IGNORE)
            elif t.name == "depth":
                depth = read_npy(path, "depth")
                depth = depth[..., 0] if depth.ndim == 3 and depth.shape[2] == 1 else depth
                check_shape(depth, path, "depth", hw)
                check_float(depth, path, "depth")
                check_values(depth, path, "depth", "[0, inf) metres", depth >= 0)
                targets["depth"] = (depth.astype(np.float32), t.kind, 0)
            elif t.name == "normal":
                normal = read_npy(path, "normal")
                check_shape(normal, path, "normal", hw, (3,))
                check_float(normal, path, "normal")
                length = np.linalg.norm(normal, axis=2)
                check_values(length, path, "normal (vector length)", f"[0, {NORMAL_LENGTH_TOLERANCE}]",
                             length <= NORMAL_LENGTH_TOLERANCE)
                targets["normal"] = (normal.astype(np.float32), t.kind, 0)
            else:
                edge = read_npy(path, "edge")
                check_shape(edge, path, "edge", hw)
                check_values(edge, path, "edge", "{0, 1}", (edge == 0) | (edge == 1))
                targets["edge"] = (edge.astype(np.float32), t.kind, IGNORE)
        return image, targets

    def _augment(self, rng: np.random.Generator, aspect: float) -> tuple[torch.Tensor, bool]:
        scale = float(rng.choice(SCALES))
        room = 1.0 - 1.0 / scale
        shift = (float(rng.uniform(-room, room)), float(rng.uniform(-room, room)))
        flip = bool(rng.random() < 0.5)
        return affine(scale=scale, flip=flip, shift=shift, aspect=aspect), flip

    def _draw(self, rng: np.random.Generator) -> tuple[bool, float, float]:
        return bool(rng.random() < 0.5), 0.0, float(rng.choice(SCALES))

    def _variant(self) -> dict:
        return {**self._normal_loss_variant(), "variant": "vandenhende_mtinet", "num_classes": NUM_CLASSES,
                "edge_pos_weight": 0.95,
                "augmentation": AUGMENTATION[self.transforms] if self.use_augment else "none"}
