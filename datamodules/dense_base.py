"""The datamodule skeleton shared by the NYUD-v2 and PASCAL-Context loaders: splits, validation at ``setup``,
seeded per-sample augmentation and the loaders the runner uses (val = dataloader 0, test = dataloader 1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.dense_io import affine, normalize_image, read_split, sample_rng, warp
from datamodules.mtinet_transforms import fixed_resize, scale_n_rotate
from datamodules.sampling import EpochShuffleSampler
from datamodules.task_spec import TaskSpec

NORMAL_LOSSES = {"cosine": "", "l1": "l1"}
"""``normal_loss`` parameter -> the normals ``TaskSpec.loss_variant``."""
TRANSFORMS = ("mtinet", "warp")
"""``mtinet``: the reference's own sample transforms with OpenCV (:mod:`datamodules.mtinet_transforms`: in training
its flip and ScaleNRotate, then its fixed resize, image and normals bicubic); ``warp``: one bilinear (image) /
nearest (targets) ``grid_sample`` through :meth:`DenseDataModule._augment` (NYUD: a random crop of the scaled
image, depth not divided by the scale; PASCAL: normals not rotated)."""
Augment = Callable[[np.random.Generator, np.ndarray, dict], tuple[np.ndarray, dict, torch.Tensor, bool]]
"""(sample rng, image, targets) -> (image, targets, theta, flip) for :func:`~datamodules.dense_io.warp`."""
Resize = Callable[[np.ndarray, dict, tuple[int, int]], tuple[np.ndarray, dict]]
"""(image, targets, (h, w)) -> (image, targets) at that size, before the identity warp."""


def _load_item(dm: DenseDataModule, ids: list[str], i: int) -> tuple[np.ndarray, dict]:
    return dm._load(ids[i])


class DenseDataset(Dataset):
    """Items ``{"image": 3 x h x w, "targets": {task: tensor}}``. A key ``(epoch, i)`` (from a keyed
    :class:`~datamodules.sampling.EpochShuffleSampler`) draws sample ``i``'s augmentation from (seed, epoch, i);
    a plain ``i`` only resizes to ``size``."""

    def __init__(self, load: Callable[[int], tuple[np.ndarray, dict]], n: int, size: tuple[int, int],
                 augment: Augment | None = None, seed: int = 0, resize: Resize | None = None) -> None:
        self.load, self.n, self.size, self.augment, self.seed, self.resize = load, n, size, augment, seed, resize

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, i = key if isinstance(key, tuple) else (None, key)
        image, targets = self.load(i)
        theta, flip = affine(), False
        if epoch is not None and self.augment is not None:
            image, targets, theta, flip = self.augment(sample_rng(self.seed, epoch, i), image, targets)
        if self.resize is not None:
            image, targets = self.resize(image, targets, self.size)
        image_t, targets_t = warp(image, targets, theta, self.size, flip)
        return {"image": normalize_image(image_t), "targets": targets_t}


class DenseDataModule(lightning.LightningDataModule):
    """Subclasses set the class attributes, ``tasks`` and implement ``_find_root``, ``_check_files`` and
    ``_load(id)`` -> (H x W x 3 uint8 image, {task: (array, kind, ignore_index)})."""

    NAME = ""
    SPLIT_FILES: dict[str, str] = {}
    EXPECTED_SIZES: dict[str, int] = {}
    ALL_TASKS: tuple[TaskSpec, ...] = ()

    def __init__(self, root: str | None, height: int, width: int, batch_size: int, num_workers: int,
                 strict_sizes: bool, val_size: int, tasks: list[str] | None, augment: bool,
                 transforms: str = "mtinet") -> None:
        super().__init__()
        if transforms not in TRANSFORMS:
            raise ValueError(f"{self.NAME}: transforms={transforms!r} is not one of {list(TRANSFORMS)}")
        self.transforms = transforms
        for name, value, low in (("height", height, 8), ("width", width, 8), ("batch_size", batch_size, 1),
                                 ("num_workers", num_workers, 0), ("val_size", val_size, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{self.NAME}: {name}={value!r} must be an integer >= {low}")
        known = [t.name for t in self.ALL_TASKS]
        chosen = known if tasks is None else list(tasks)
        unknown = [t for t in chosen if t not in known]
        if unknown or not chosen:
            raise ValueError(f"{self.NAME}: tasks={tasks!r}: each must be one of {known}")
        self.root_param, self.size = root, (height, width)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.strict_sizes, self.val_size, self.use_augment = strict_sizes, val_size, augment
        self.tasks: list[TaskSpec] = [t for t in self.ALL_TASKS if t.name in chosen]
        self.root: Path | None = None
        self.ids: dict[str, list[str]] = {}
        self.source_hw: tuple[int, int] | None = None

    # subclass hooks
    def _find_root(self) -> Path:
        raise NotImplementedError

    def _check_files(self, split: str, ids: list[str]) -> None:
        raise NotImplementedError

    def _load(self, item: str) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def _augment(self, rng: np.random.Generator, aspect: float) -> tuple[torch.Tensor, bool]:
        """``warp`` transforms: (theta, flip) for an input of aspect w / h."""
        raise NotImplementedError

    def _draw(self, rng: np.random.Generator) -> tuple[bool, float, float]:
        """``mtinet`` transforms: (flip, angle in degrees, scale), drawn as the reference's transforms do."""
        raise NotImplementedError

    def _augmented(self, rng: np.random.Generator, image: np.ndarray, targets: dict
                   ) -> tuple[np.ndarray, dict, torch.Tensor, bool]:
        """One training sample's augmentation (:data:`Augment`), as ``transforms`` says."""
        if self.transforms == "mtinet":
            return (*scale_n_rotate(image, targets, *self._draw(rng)), affine(), False)
        theta, flip = self._augment(rng, image.shape[1] / image.shape[0])
        return image, targets, theta, flip

    def _variant(self) -> dict:
        return {}

    def _set_normal_loss(self, normal_loss: str) -> None:
        """``"cosine"`` (1 - cos, the default) or ``"l1"`` (Vandenhende's L1, P3 / P5) for the normals task."""
        if normal_loss not in NORMAL_LOSSES:
            raise ValueError(f"{self.NAME}: normal_loss={normal_loss!r} is not one of {list(NORMAL_LOSSES)}")
        self.normal_loss = normal_loss
        variant = NORMAL_LOSSES[normal_loss]
        self.tasks = [replace(t, loss_variant=variant) if t.kind == "normals" else t for t in self.tasks]

    def _normal_loss_variant(self) -> dict:
        """``{"normal_loss": ...}`` for ``describe()`` when it is not the default (records stay as they were)."""
        return {} if self.normal_loss == "cosine" else {"normal_loss": self.normal_loss}

    def prepare_data(self) -> None:
        """Nothing to download: the data must be in place (see the error ``setup`` gives otherwise)."""

    def setup(self, stage: str | None = None) -> None:
        """Find the root, read and check the split files, check every file exists, validate one sample per split."""
        if self.ids:
            return
        self.root = self._find_root()
        ids = {}
        for split, rel in self.SPLIT_FILES.items():
            expected = self.EXPECTED_SIZES.get(split) if self.strict_sizes else None
            ids[split] = read_split(self.root / rel, expected, self.NAME)
            self._check_files(split, ids[split])
        train, test = ids["train"], ids["val"]
        if self.val_size >= len(train):
            raise ValueError(f"{self.NAME}: val_size={self.val_size} leaves no training image ({len(train)} listed)")
        if self.batch_size > len(train) - self.val_size:
            raise ValueError(f"{self.NAME}: batch_size={self.batch_size} exceeds the {len(train) - self.val_size} "
                             "training images; with drop_last there would be no training batch")
        if self.val_size:
            held = set(np.random.default_rng(0).permutation(len(train))[: self.val_size].tolist())
            self.ids = {"train": [x for k, x in enumerate(train) if k not in held],
                        "val": [x for k, x in enumerate(train) if k in held], "test": test}
        else:
            self.ids = {"train": train, "val": test, "test": test}
        for split in ("train", "test"):
            image, _ = self._load(self.ids[split][0])
            self.source_hw = self.source_hw or tuple(image.shape[:2])

    def _dataset(self, split: str, seed: int = 0) -> DenseDataset:
        if not self.ids:
            self.setup()
        ids = self.ids[split]
        augment = self._augmented if split == "train" and self.use_augment else None
        resize = fixed_resize if self.transforms == "mtinet" else None
        return DenseDataset(partial(_load_item, self, ids), len(ids), self.size, augment, seed, resize)

    def _loader(self, dataset: Dataset, sampler=None, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self, seed: int | None = None) -> DataLoader:
        """Order and augmentation are functions of (``seed``, epoch, sample index) only."""
        seed = 0 if seed is None else seed
        dataset = self._dataset("train", seed)
        return self._loader(dataset, EpochShuffleSampler(len(dataset), seed, keyed=True), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test"))

    def describe(self) -> dict:
        """Plain-dict summary of the dataset variant for the run record."""
        sizes = {k: len(v) for k, v in self.ids.items()}
        return {"name": self.NAME, "root": str(self.root), "height": self.size[0], "width": self.size[1],
                "source_height_width": list(self.source_hw) if self.source_hw else None, "sizes": sizes,
                "val": (f"{self.val_size} images held out of train (seed 0)" if self.val_size
                        else "the test split (the reference protocol selects on it)"),
                "val_is_test": not self.val_size,
                "tasks": [t.name for t in self.tasks], "augment": self.use_augment,
                "image_normalisation": "imagenet mean/std", **self._variant()}
