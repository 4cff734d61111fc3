"""PASCAL-Context multi-task data, ASTMT ``PASCAL_MT`` layout (docs/data.md §4.4; docs/protocols.md P5, CSO).

Tasks: 21-class semseg (255 ignore; ``semseg/VOC12`` first, else ``semseg/pascal-context``), human parts (6 parts
+ background from PASCAL-Part; an image without a person with parts is all 255), saliency (``sal_distill / 255 >
0.5``), surface normals (``normals_distill``: n = 2x/255 - 1, rescaled to unit length) and edges (auxiliary: the
Guo-Hall thinning of |Laplacian(LabelMap)| > 0, as the reference's ``skimage.morphology.thin(cv2.Laplacian(..))``;
balanced BCE with positive weight 0.95). Vandenhende et al. (TPAMI 2021) and Maninis et al. (CVPR 2019).

The reference keeps normals only on Context classes that NYU also has (its repository's ``data/db_info/
nyu_classes.json``, ``context_classes.json``, not the archive); ``normals_valid_classes`` takes those LabelMap ids
(the CSO protocol lists them), None keeps every pixel (recorded by ``describe()``). Training augmentation (P5):
horizontal flip (normals' x negated), rotation U(-20, 20) degrees and scale U(0.75, 1.25) about the centre, then
a fixed resize to ``height x width``; evaluation is the fixed resize. ``transforms: mtinet`` (the default) are the
reference's own (:mod:`datamodules.mtinet_transforms`: OpenCV, image and normals bicubic, normals' in-plane
component rotated, zero outside the image; verified sample by sample in tests/test_reference_mtinet.py); ``warp``
resamples the image bilinear and every target nearest in one ``grid_sample`` and does not rotate the normals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import scipy.ndimage
import torch

from datamodules.dense_base import DenseDataModule
from datamodules.dense_io import (
    affine,
    check_shape,
    check_values,
    read_png,
    read_rgb,
    require_files,
    resolve_root,
)
from datamodules.task_spec import TaskSpec

ARCHIVE = ("https://data.vision.ee.ethz.ch/kmaninis/share/MTL/PASCAL_MT.tgz (ASTMT; mirror: "
           "https://data.vision.ee.ethz.ch/brdavid/atrc/PASCALContext.tar.gz)")
LAYOUT = """  <root>/PASCAL_MT/JPEGImages/<id>.jpg                 RGB
  <root>/PASCAL_MT/ImageSets/Context/{train,val}.txt   4998 / 5105 ids, one per line
  <root>/PASCAL_MT/semseg/VOC12/<id>.png               uint8 0..20, 255 ignore (else semseg/pascal-context/)
  <root>/PASCAL_MT/human_parts/<id>.mat                PASCAL-Part struct 'anno'
  <root>/PASCAL_MT/normals_distill/<id>.png            RGB uint8
  <root>/PASCAL_MT/sal_distill/<id>.png                uint8 (H, W)
  <root>/PASCAL_MT/pascal-context/trainval/<id>.mat    'LabelMap' (H, W) integer"""
ENV = "MTOBENCH_PASCAL"
IGNORE = 255
PERSON = 15
PART_GROUPS = {
    1: ("head", "hair", "lear", "rear", "leye", "reye", "lebrow", "rebrow", "nose", "mouth"),
    2: ("torso", "neck"),
    3: ("luarm", "ruarm"),
    4: ("llarm", "rlarm", "lhand", "rhand"),
    5: ("luleg", "ruleg"),
    6: ("llleg", "rlleg", "lfoot", "rfoot"),
}
"""The 24 PASCAL-Part person part names grouped into head, torso, upper arm, lower arm / hand, upper leg, lower
leg / foot (docs/data.md §4.4); authored here, the neck counted with the torso."""
PART_IDS = {name: k for k, names in PART_GROUPS.items() for name in names}
ROTATION_DEG = 20.0
SCALE_RANGE = (0.75, 1.25)


def thin(mask: np.ndarray) -> np.ndarray:
    """Morphological thinning to one-pixel-wide 8-connected curves (Guo & Hall, CACM 1989, algorithm A1, in the
    form of Lam, Lee & Suen, TPAMI 1992, §4; the algorithm of ``skimage.morphology.thin``).

    Neighbours x1..x8 run counter-clockwise from east (row 0 is the top). A pixel is removed when X_H = 1,
    2 <= min(n1, n2) <= 3 and, in the first sub-iteration, (x2 | x3 | ~x8) & x1 = 0, in the second
    (x6 | x7 | ~x4) & x5 = 0; sub-iterations alternate until nothing changes.
    """
    img = np.pad(mask.astype(bool), 1)
    offsets = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))
    h, w = mask.shape
    while True:
        changed = False
        for first in (True, False):
            x = [None] + [img[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in offsets]
            x.append(x[1])
            xh = sum((~x[2 * i - 1] & (x[2 * i] | x[2 * i + 1])).astype(np.int8) for i in range(1, 5))
            n1 = sum((x[2 * k - 1] | x[2 * k]).astype(np.int8) for k in range(1, 5))
            n2 = sum((x[2 * k] | x[2 * k + 1]).astype(np.int8) for k in range(1, 5))
            lo = np.minimum(n1, n2)
            g3 = ((x[2] | x[3] | ~x[8]) & x[1]) if first else ((x[6] | x[7] | ~x[4]) & x[5])
            remove = img[1:-1, 1:-1] & (xh == 1) & (lo >= 2) & (lo <= 3) & ~g3
            if remove.any():
                img[1:-1, 1:-1] &= ~remove
                changed = True
        if not changed:
            return img[1:-1, 1:-1].copy()


def edges_from_labelmap(label_map: np.ndarray) -> np.ndarray:
    """Edge GT: thin(|Laplacian(LabelMap)| > 0) with the 4-neighbour Laplacian and mirrored borders (OpenCV's
    default ``cv2.Laplacian`` kernel and ``BORDER_REFLECT_101``)."""
    lap = scipy.ndimage.laplace(label_map.astype(np.float64), mode="mirror")
    return thin(np.abs(lap) > 0)


def _load_mat(path: Path, field: str, key: str) -> np.ndarray:
    try:
        data = scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError, scipy.io.matlab.MatReadError) as exc:
        raise ValueError(f"{path}: field {field!r}: cannot read the .mat file ({exc})") from exc
    if key not in data:
        raise ValueError(f"{path}: field {field!r}: the .mat file has no variable {key!r} "
                         f"(has {sorted(k for k in data if not k.startswith('__'))})")
    return data[key]


def human_parts_map(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """H x W int64: part ids 1..6 of every person (class 15) with parts, 0 elsewhere; all 255 if there is none."""
    anno = _load_mat(path, "human_parts", "anno")
    try:
        objects = anno[0][0][1][0]
        parsed = [(int(np.asarray(o[1]).ravel()[0]), o[3]) for o in objects]
    except (IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: field 'human_parts': 'anno' is not the PASCAL-Part struct "
                         f"(anno[0][0][1][0] = objects of (class, class_ind, mask, parts)): {exc}") from exc
    target = None
    for cls, parts in parsed:
        if cls != PERSON or np.size(parts) == 0:
            continue
        target = np.zeros(hw, dtype=np.int64) if target is None else target
        for part in parts[0]:
            name, mask = str(np.asarray(part[0]).ravel()[0]), np.asarray(part[1])
            if name not in PART_IDS:
                raise ValueError(f"{path}: field 'human_parts': part name {name!r} is not one of {sorted(PART_IDS)}")
            check_shape(mask, path, f"human_parts mask of {name!r}", hw)
            target[mask.astype(bool)] = PART_IDS[name]
    return np.full(hw, IGNORE, dtype=np.int64) if target is None else target


class PascalContextDataModule(DenseDataModule):
    """PASCAL-Context (4998 train / 5105 val = test) with semseg, parts, saliency, normal and edge (auxiliary)."""

    NAME = "pascal_context"
    SCORED_METRICS = ("semseg/miou", "parts/miou", "saliency/miou", "normal/normal_mean")
    """CSO's Δm set, one metric per task, saliency by mIoU (docs/protocols.md P5); the edges are auxiliary."""
    SPLIT_FILES = {"train": "ImageSets/Context/train.txt", "val": "ImageSets/Context/val.txt"}
    EXPECTED_SIZES = {"train": 4998, "val": 5105}
    ALL_TASKS = (
        TaskSpec("semseg", "segmentation", num_classes=21, ignore_index=IGNORE),
        TaskSpec("parts", "human_parts", num_classes=7, ignore_index=IGNORE),
        TaskSpec("saliency", "saliency", ignore_index=IGNORE),
        TaskSpec("normal", "normals"),
        TaskSpec("edge", "edges", ignore_index=IGNORE, pos_weight=0.95, auxiliary=True),
    )

    def __init__(self, root: str | None = None, height: int = 512, width: int = 512, batch_size: int = 8,
                 num_workers: int = 0, strict_sizes: bool = True, val_size: int = 0,
                 tasks: list[str] | None = None, augment: bool = True,
                 normals_valid_classes: list[int] | None = None, normal_loss: str = "cosine",
                 transforms: str = "mtinet") -> None:
        super().__init__(root, height, width, batch_size, num_workers, strict_sizes, val_size, tasks, augment,
                         transforms)
        self._set_normal_loss(normal_loss)
        self.normals_valid_classes = None if normals_valid_classes is None else sorted(set(normals_valid_classes))
        self.save_hyperparameters()

    def _find_root(self) -> Path:
        return resolve_root(self.root_param, ENV, "PASCAL_MT", "ImageSets", "pascal_context", ARCHIVE, LAYOUT)

    def _files(self, item: str) -> dict[str, Path]:
        r = self.root
        voc = r / "semseg" / "VOC12" / f"{item}.png"
        return {"image": r / "JPEGImages" / f"{item}.jpg",
                "semseg": voc if voc.is_file() else r / "semseg" / "pascal-context" / f"{item}.png",
                "parts": r / "human_parts" / f"{item}.mat", "saliency": r / "sal_distill" / f"{item}.png",
                "normal": r / "normals_distill" / f"{item}.png",
                "labelmap": r / "pascal-context" / "trainval" / f"{item}.mat"}

    def _needed(self) -> list[str]:
        names = ["image", *(t.name for t in self.tasks if t.name != "edge")]
        if any(t.name == "edge" for t in self.tasks) or ("normal" in names and self.normals_valid_classes is not None):
            names.append("labelmap")
        return names

    def _check_files(self, split: str, ids: list[str]) -> None:
        files = [self._files(i) for i in ids]
        for field in self._needed():
            require_files([f[field] for f in files], "pascal_context", field)

    def _load(self, item: str) -> tuple[np.ndarray, dict]:
        """Read and validate one sample; errors name the file, the field and the value."""
        files = self._files(item)
        image = read_rgb(files["image"])
        hw = image.shape[:2]
        label_map = None
        if "labelmap" in self._needed():
            label_map = _load_mat(files["labelmap"], "LabelMap", "LabelMap")
            check_shape(label_map, files["labelmap"], "LabelMap", hw)
            if label_map.dtype.kind not in "iu":
                raise ValueError(f"{files['labelmap']}: field 'LabelMap': dtype {label_map.dtype} is not an integer "
                                 "dtype")
        kinds = {t.name: t.kind for t in self.tasks}
        targets = {}
        if "semseg" in kinds:
            path = files["semseg"]
            seg = read_png(path, "semseg")
            check_shape(seg, path, "semseg", hw)
            check_values(seg, path, "semseg", "[0, 20] or 255", (seg <= 20) | (seg == IGNORE))
            targets["semseg"] = (seg.astype(np.int64), kinds["semseg"], IGNORE)
        if "parts" in kinds:
            targets["parts"] = (human_parts_map(files["parts"], hw), kinds["parts"], IGNORE)
        if "saliency" in kinds:
            path = files["saliency"]
            sal = read_png(path, "saliency")
            check_shape(sal, path, "saliency", hw)
            targets["saliency"] = ((sal / 255.0 > 0.5).astype(np.float32), kinds["saliency"], IGNORE)
        if "normal" in kinds:
            path = files["normal"]
            normal = 2.0 * read_png(path, "normal", channels=3).astype(np.float32) / 255.0 - 1.0
            check_shape(normal, path, "normal", hw, (3,))
            if self.normals_valid_classes is not None:
                normal = np.where(np.isin(label_map, self.normals_valid_classes)[..., None], normal, 0.0)
            targets["normal"] = (normal.astype(np.float32), kinds["normal"], 0)
        if "edge" in kinds:
            targets["edge"] = (edges_from_labelmap(label_map).astype(np.float32), kinds["edge"], IGNORE)
        return image, targets

    def _augment(self, rng: np.random.Generator, aspect: float) -> tuple[torch.Tensor, bool]:
        flip = bool(rng.random() < 0.5)
        angle = float(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
        scale = float(rng.uniform(*SCALE_RANGE))
        return affine(scale=scale, angle_deg=angle, flip=flip, aspect=aspect), flip

    def _draw(self, rng: np.random.Generator) -> tuple[bool, float, float]:
        flip = bool(rng.random() < 0.5)
        return flip, float(rng.uniform(-ROTATION_DEG, ROTATION_DEG)), float(rng.uniform(*SCALE_RANGE))

    def _variant(self) -> dict:
        return {**self._normal_loss_variant(), "variant": "astmt_pascal_mt", "semseg_classes": 21, "parts_classes": 7,
                "edge_pos_weight": 0.95,
                "normals_valid_classes": self.normals_valid_classes or "all pixels (not the reference NYU-class mask)",
                "augmentation": (f"{self.transforms}: flip, rotation U(-20, 20) deg, scale U(0.75, 1.25), fixed "
                                 "resize" if self.use_augment else "none")}
