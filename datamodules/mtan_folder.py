"""The MTAN ``.npy`` release layout shared by NYUv2 and Cityscapes (docs/data.md §4.1-4.2, docs/protocols.md P1, P4).

``<root>/{train,val}/<folder>/<i>.npy``. MTAN's ``val`` is the papers' test split, so ``val`` here is carved
from ``train`` (``val_size`` files, drawn with ``split_seed``, independent of the run seed). Training
augmentation is MTAN's RandomScaleCrop + horizontal flip (docs/protocols.md P1 "Augmentation"); every draw, and
the training order, is a pure function of (run seed, epoch, file index), so a resumed run sees the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.npy_folder import (
    ArraySpec,
    DataError,
    DatasetSource,
    check_header,
    load_array,
    matched_indices,
    resolve_root,
)
from datamodules.sampling import EpochShuffleSampler
from datamodules.task_spec import TaskSpec

SCALES = (1.0, 1.2, 1.5)
_SPLIT_TAG, _AUG_TAG = 1, 3
"""First SeedSequence word of each random stream, so that no two streams share a seed."""


@dataclass(frozen=True)
class Field:
    """One per-sample array: the batch key (``image`` or a task name), its folder, its kind and its checks."""

    key: str
    folder: str
    kind: str
    """``image``, or a ``TaskSpec`` kind: ``segmentation``, ``depth``, ``normals``."""
    spec: ArraySpec


@dataclass(frozen=True)
class ScaleCropFlip:
    """One draw of MTAN's RandomScaleCrop + flip: crop ``int(H/scale) x int(W/scale)`` at (top, left)."""

    scale: float
    top: int
    left: int
    flip: bool


def draw_scale_crop_flip(seed: int, epoch: int, index: int, height: int, width: int) -> ScaleCropFlip:
    """The augmentation of sample ``index`` in ``epoch`` of the run with ``seed``; no global RNG is used."""
    rng = np.random.default_rng([_AUG_TAG, seed, epoch, index])
    scale = SCALES[int(rng.integers(len(SCALES)))]
    h, w = int(height / scale), int(width / scale)
    return ScaleCropFlip(scale, int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)),
                         bool(rng.random() < 0.5))


def _resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    kwargs = {"align_corners": True} if mode == "bilinear" else {}
    work = x if x.is_floating_point() else x.float()
    return F.interpolate(work[None], size=size, mode=mode, **kwargs)[0].to(x.dtype)


def scale_crop_flip(sample: dict[str, Tensor], kinds: dict[str, str], aug: ScaleCropFlip) -> dict[str, Tensor]:
    """Apply ``aug`` to C x H x W maps (segmentation H x W), by kind, as MTAN's ``RandomScaleCrop``:

    crop, then resize back to H x W (image and normals bilinear with align_corners, not renormalised; labels and
    depth nearest), in the maps' own float dtype (the release's float64, as MTAN resizes before its ``.float()``);
    depth is divided by the scale (a zoom brings the scene closer). A flip mirrors every map
    and negates the normals' x channel. Invalid values (label ignore, depth 0, zero normal) stay invalid.
    """
    out = {}
    for key, x in sample.items():
        kind = kinds[key]
        size = tuple(x.shape[-2:])
        h, w = int(size[0] / aug.scale), int(size[1] / aug.scale)
        crop = x[..., aug.top:aug.top + h, aug.left:aug.left + w]
        if kind == "segmentation":
            y = _resize(crop[None], size, "nearest")[0]
        elif kind == "depth":
            y = _resize(crop, size, "nearest") / aug.scale
        else:
            y = _resize(crop, size, "bilinear")
        if aug.flip:
            y = y.flip(-1)
            if kind == "normals":
                y = torch.cat([-y[:1], y[1:]])
        out[key] = y
    return out


def to_tensor(array: np.ndarray, kind: str) -> Tensor:
    """H x W x C float arrays -> C x H x W in their float dtype (float64 stays float64 until the augmentation is
    done, :func:`to_float32`); labels H x W -> int64 (the ignore value kept)."""
    if kind == "segmentation":
        return torch.from_numpy(np.asarray(array, dtype=np.int64))
    dtype = np.float64 if array.dtype == np.float64 else np.float32
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(array, dtype=dtype), -1, 0)))


def to_float32(sample: dict[str, Tensor]) -> dict[str, Tensor]:
    """Float maps to float32, after the crop, resize, depth scaling and flip (MTAN's order: the reference's
    ``__getitem__`` augments the arrays as loaded and ends with ``.float()``); labels stay int64."""
    return {k: v.float() if v.is_floating_point() else v for k, v in sample.items()}


class NpyFolderDataset(Dataset):
    """Samples ``split_dir/<folder>/<id>.npy`` for ``ids``; each file is value-checked when loaded.

    A key is a position, or ``(epoch, position)`` from a keyed ``EpochShuffleSampler``; with ``augment_seed`` set
    the latter is augmented with ``draw_scale_crop_flip(augment_seed, epoch, id)``.
    """

    def __init__(self, split_dir: Path, ids: list[int], fields: list[Field], augment_seed: int | None = None):
        self.split_dir, self.ids, self.fields, self.augment_seed = split_dir, ids, fields, augment_seed
        self.kinds = {f.key: f.kind for f in fields}

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, position: int) -> dict[str, Tensor]:
        file_id = self.ids[position]
        return {f.key: to_tensor(load_array(self.split_dir / f.folder / f"{file_id}.npy", f.spec), f.kind)
                for f in self.fields}

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, position = key if isinstance(key, tuple) else (None, key)
        sample = self.load(position)
        if self.augment_seed is not None and epoch is not None:
            image = sample["image"]
            aug = draw_scale_crop_flip(self.augment_seed, epoch, self.ids[position], *image.shape[-2:])
            sample = scale_crop_flip(sample, self.kinds, aug)
        sample = to_float32(sample)
        image = sample.pop("image")
        return {"image": image, "targets": sample}


def _check_int(owner: str, name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{owner}: {name}={value!r} must be an integer >= {low}")


class MTANFolderDataModule(lightning.LightningDataModule):
    """Base of the MTAN-layout datamodules; subclasses set ``name``, ``source``, ``split_sizes`` and ``fields``.

    Splits: ``train`` = MTAN ``train/`` minus the carved validation files; ``val`` = ``val_size`` files of
    ``train/`` (``val_size=0``: none are carved and ``val`` *is* the test split, flagged ``val_is_test`` in
    ``describe()``, for paper protocols that train on all of ``train/``); ``test`` = MTAN ``val/``.
    """

    name = ""
    source: DatasetSource
    split_sizes: dict[str, int] = {}
    """Files per MTAN folder in the public release, checked when ``check_sizes``."""

    def __init__(self, root: str | None = None, height: int = 0, width: int = 0, batch_size: int = 2,
                 val_size: int = 0, split_seed: int = 0, augment: bool = True, drop_last: bool = False,
                 check_sizes: bool = True, num_workers: int = 0):
        super().__init__()
        owner = type(self).__name__
        for key, value, low in (("height", height, 8), ("width", width, 8), ("batch_size", batch_size, 1),
                                ("val_size", val_size, 0), ("split_seed", split_seed, 0),
                                ("num_workers", num_workers, 0)):
            _check_int(owner, key, value, low)
        for key, value in (("augment", augment), ("drop_last", drop_last), ("check_sizes", check_sizes)):
            if not isinstance(value, bool):
                raise ValueError(f"{owner}: {key}={value!r} must be true or false")
        self.root_arg, self.height, self.width, self.batch_size = root, height, width, batch_size
        self.val_size, self.split_seed, self.augment, self.drop_last = val_size, split_seed, augment, drop_last
        self.check_sizes, self.num_workers = check_sizes, num_workers
        self.root: Path | None = None
        self.file_ids: dict[str, list[int]] = {}
        self.split_ids: dict[str, list[int]] = {}

    @property
    def tasks(self) -> list[TaskSpec]:
        raise NotImplementedError

    def fields(self, split_dir: Path) -> list[Field]:
        """The arrays of one MTAN folder (``split_dir`` lets a subclass pick among folder-name variants)."""
        raise NotImplementedError

    def _scan(self, folder: str) -> list[int]:
        split_dir = self.root / folder
        if not split_dir.is_dir():
            raise DataError(f"{self.name}: split folder {split_dir} does not exist (expected "
                            f"{sorted(self.split_sizes)} under {self.root})")
        fields = self.fields(split_dir)
        ids = matched_indices(split_dir, {f.key: f.folder for f in fields})
        expected = self.split_sizes[folder]
        if self.check_sizes and len(ids) != expected:
            raise DataError(f"{self.name}: {split_dir / fields[0].folder} has {len(ids)} samples, the MTAN release has "
                            f"{expected} (set dataset.params.check_sizes=false for a subset)")
        for f in fields:
            for i in ids:
                check_header(split_dir / f.folder / f"{i}.npy", f.spec)
            load_array(split_dir / f.folder / f"{ids[0]}.npy", f.spec)
        return ids

    def setup(self, stage: str | None = None) -> None:
        """Check the layout, every file's header and the first sample's values; carve the validation split."""
        if self.split_ids:
            return
        self.root = resolve_root(self.root_arg, self.source)
        self.file_ids = {folder: self._scan(folder) for folder in ("train", "val")}
        train = self.file_ids["train"]
        if self.val_size >= len(train):
            raise ValueError(f"{self.name}: val_size={self.val_size} must be smaller than the {len(train)} files of "
                             f"{self.root / 'train'}")
        order = np.random.default_rng([_SPLIT_TAG, self.split_seed]).permutation(len(train))
        val = sorted(train[i] for i in order[:self.val_size])
        kept = sorted(train[i] for i in order[self.val_size:])
        if self.batch_size > len(kept) and self.drop_last:
            raise ValueError(f"{self.name}: batch_size={self.batch_size} exceeds the {len(kept)} training files; "
                             "with drop_last=true there would be no training batch")
        self.split_ids = {"train": kept, "val": val if val else self.file_ids["val"], "test": self.file_ids["val"]}

    def prepare_data(self) -> None:
        """Nothing to download or generate; the data is the user's (see ``setup``)."""

    def describe(self) -> dict:
        """Plain-dict summary of the dataset variant for the run record (which file went to which split)."""
        if not self.split_ids:
            self.setup()
        return {"name": self.name, "variant": "mtan_npy", "root": str(self.root.resolve()),
                "height": self.height, "width": self.width, "task_names": [t.name for t in self.tasks],
                "folders": {f.key: f.folder for f in self.fields(self.root / "train")},
                "sizes": {split: len(ids) for split, ids in self.split_ids.items()},
                "train_source": "train/ minus val_ids", "val_source": "train/" if self.val_size else "val/ (= test)",
                "test_source": "val/", "val_is_test": self.val_size == 0, "val_ids": self.split_ids["val"]
                if self.val_size else [], "val_size": self.val_size, "split_seed": self.split_seed,
                "augment": "RandomScaleCrop(1, 1.2, 1.5) + hflip" if self.augment else "none",
                "drop_last": self.drop_last, "check_sizes": self.check_sizes}

    def dataset(self, split: str, augment_seed: int | None = None) -> NpyFolderDataset:
        if not self.split_ids:
            self.setup()
        folder = "val" if split == "test" or (split == "val" and not self.val_size) else "train"
        return NpyFolderDataset(self.root / folder, self.split_ids[split], self.fields(self.root / folder),
                                augment_seed)

    def train_dataloader(self, seed: int | None = None) -> DataLoader:
        """Batches in an order drawn from (``seed``, epoch), augmented from (``seed``, epoch, file) if enabled."""
        seed = 0 if seed is None else seed
        ds = self.dataset("train", seed if self.augment else None)
        return DataLoader(ds, batch_size=self.batch_size, sampler=EpochShuffleSampler(len(ds), seed, keyed=True),
                          drop_last=self.drop_last, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
