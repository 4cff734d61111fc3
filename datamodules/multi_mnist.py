"""MultiMNIST, MultiFashion and MultiFashion+MNIST: two overlapping 28x28 items per image, tasks ``left``/``right``.

Construction (Sener & Koltun, NeurIPS 2018, §5.1 and their public loader; reused by Lin et al., Pareto MTL,
NeurIPS 2019, §6.1; docs/protocols.md P7), for every source item ``i`` of a split:

* a partner ``j`` is drawn uniformly at random (with replacement) from the same split's partner pool;
* on a 36x36 zero canvas, item ``i`` is placed at rows/cols 0:28 (top-left) and ``j`` at 6:34 (bottom-right);
  where they overlap the pixel is the element-wise maximum;
* the canvas is resized to 28x28 with nearest-neighbour sampling, PIL's convention: output pixel ``k`` reads
  source pixel ``floor((k + 0.5) * 36 / 28)``;
* the labels are ``left`` = class of ``i``, ``right`` = class of ``j`` (10 classes each);
* the image is normalised with MNIST's mean 0.1307 and std 0.3081 (P7), for every variant.

Variants: ``multi_mnist`` (both items MNIST digits), ``multi_fashion`` (both Fashion-MNIST items),
``multi_fashion_mnist`` (an MNIST digit top-left, a Fashion-MNIST item bottom-right). Splits: ``test`` is built
from the official 10k test files; ``val`` and ``train`` from disjoint parts of a seeded permutation of the 60k
training files, so no source item appears in two splits. The built splits are cached as ``.npz`` under
``data_dir/multi_mnist/<key>``, keyed by every construction parameter and the sha256 of the source files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.idx import read_idx
from datamodules.split_loaders import SplitLoaders
from datamodules.synthetic_scenes import _atomic_write
from datamodules.task_spec import TaskSpec

CONSTRUCTION_VERSION = 1
VARIANTS = {"multi_mnist": ("mnist", "mnist"), "multi_fashion": ("fashion", "fashion"),
            "multi_fashion_mnist": ("mnist", "fashion")}
SOURCE_STREAMS = {"mnist": 0, "fashion": 1}
"""Random stream of each source's split permutation: one per source, so both sides of MultiMNIST share it."""
SPLITS = ("train", "val", "test")
MEAN, STD = 0.1307, 0.3081
CANVAS, OFFSET, SIZE = 36, 6, 28
FASHION_DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
SOURCE_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
HOW_TO_GET = {
    "mnist": ("the four MNIST files of https://yann.lecun.com/exdb/mnist/ (or any mirror of them); "
              "set dataset.params.mnist_root or the environment variable MTOBENCH_MNIST to their folder"),
    "fashion": ("Fashion-MNIST from https://github.com/zalandoresearch/fashion-mnist (data/fashion), or the Debian "
                f"package dataset-fashion-mnist (`make data-fashion`), which installs them in {FASHION_DEBIAN_ROOT}; "
                "set dataset.params.fashion_root or the environment variable MTOBENCH_FASHION_MNIST to their folder"),
}
ENV_VARS = {"mnist": "MTOBENCH_MNIST", "fashion": "MTOBENCH_FASHION_MNIST"}


def resize_nearest_index(src: int = CANVAS, dst: int = SIZE) -> np.ndarray:
    """Source index of each output pixel for nearest-neighbour resizing (pixel-centre convention, as PIL)."""
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def overlay(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``N x 28 x 28`` uint8 composites: ``left`` at the canvas's top-left, ``right`` at its bottom-right."""
    n = left.shape[0]
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    canvas[:, :SIZE, :SIZE] = left
    window = canvas[:, OFFSET:OFFSET + SIZE, OFFSET:OFFSET + SIZE]
    np.maximum(window, right, out=window)
    idx = resize_nearest_index()
    return canvas[:, idx][:, :, idx]


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


def split_indices(n_source: int, seed: int, n_val: int, n_train: int | None, source: int) -> dict[str, np.ndarray]:
    """Disjoint ``train`` and ``val`` indices into a source's 60k training set, from a seeded permutation."""
    order = _rng(seed, 1000 + source).permutation(n_source)
    train = order[n_val:] if n_train is None else order[n_val:n_val + n_train]
    return {"val": order[:n_val], "train": train}


def build_split(left: tuple[np.ndarray, np.ndarray], right: tuple[np.ndarray, np.ndarray], seed: int,
                split: str) -> dict[str, np.ndarray]:
    """Composite images and labels of one split from its left items and its partner pool ``right``."""
    partners = _rng(seed, SPLITS.index(split)).integers(0, right[0].shape[0], size=left[0].shape[0])
    return {"image": overlay(left[0], right[0][partners]), "left": left[1].astype(np.int64),
            "right": right[1][partners].astype(np.int64)}


class _MultiDataset(Dataset):
    def __init__(self, arrays: dict[str, np.ndarray], normalize: bool):
        image = torch.from_numpy(arrays["image"]).float().div_(255.0).unsqueeze(1)
        self.image = (image - MEAN) / STD if normalize else image
        self.left, self.right = torch.from_numpy(arrays["left"]), torch.from_numpy(arrays["right"])

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"image": self.image[i], "targets": {"left": self.left[i], "right": self.right[i]}}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class MultiMNISTDataModule(SplitLoaders):
    """Two-item overlay datasets (module docstring), 1 x 28 x 28 images, tasks ``left`` and ``right``."""

    def __init__(self, batch_size: int = 256, variant: str = "multi_mnist", mnist_root: str | None = None,
                 fashion_root: str | None = None, data_dir: str = "data", seed: int = 0, n_train: int | None = None,
                 n_val: int = 10000, n_test: int | None = None, normalize: bool = True, num_workers: int = 0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"MultiMNISTDataModule: variant={variant!r} is not one of {list(VARIANTS)}")
        for name, value, low, optional in (("batch_size", batch_size, 1, False), ("seed", seed, 0, False),
                                           ("n_train", n_train, 1, True), ("n_val", n_val, 1, False),
                                           ("n_test", n_test, 1, True), ("num_workers", num_workers, 0, False)):
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"MultiMNISTDataModule: {name}={value!r} must be an integer >= {low}"
                                 + (" or null" if optional else ""))
        if n_train is not None and batch_size > n_train:
            raise ValueError(f"MultiMNISTDataModule: batch_size={batch_size} exceeds n_train={n_train}; "
                             "with drop_last=True there would be no training batch")
        self.save_hyperparameters()
        self.variant, self.data_dir, self.seed, self.normalize = variant, data_dir, seed, normalize
        self.batch_size, self.num_workers = batch_size, num_workers
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.roots = {"mnist": mnist_root, "fashion": fashion_root}
        self.tasks = [TaskSpec("left", "classification", num_classes=10),
                      TaskSpec("right", "classification", num_classes=10)]
        self.datasets: dict[str, _MultiDataset] = {}
        self._sources: dict[str, dict[str, Path]] | None = None
        self._params: dict | None = None

    # ------------------------------------------------------------------ sources
    def _root(self, source: str) -> tuple[Path, str]:
        """The folder of ``source`` and where it came from: the param, the env var, or the Debian default."""
        if self.roots[source]:
            return Path(self.roots[source]), f"dataset.params.{source}_root"
        if os.environ.get(ENV_VARS[source]):
            return Path(os.environ[ENV_VARS[source]]), f"${ENV_VARS[source]}"
        if source == "fashion":
            return Path(FASHION_DEBIAN_ROOT), "the Debian package dataset-fashion-mnist"
        raise FileNotFoundError(f"{self.variant}: no MNIST folder given; it needs {HOW_TO_GET['mnist']}")

    def source_files(self) -> dict[str, dict[str, Path]]:
        """``{source: {"train-images": path, ...}}`` for the sources of the variant; each file plain or ``.gz``."""
        if self._sources is None:
            self._sources = {}
            for source in sorted(set(VARIANTS[self.variant])):
                root, origin = self._root(source)
                found, missing = {}, []
                for name in (n for pair in SOURCE_FILES.values() for n in pair):
                    path = next((p for p in (root / name, root / f"{name}.gz") if p.is_file()), None)
                    if path is None:
                        missing.append(f"{name}[.gz]")
                    found[name] = path
                if missing:
                    raise FileNotFoundError(f"{self.variant}: {source} folder {root} (from {origin}) lacks "
                                            f"{', '.join(missing)}; it needs {HOW_TO_GET[source]}")
                self._sources[source] = found
        return self._sources

    def _load_source(self, source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        files = self.source_files()[source]
        image_name, label_name = SOURCE_FILES[split]
        images = read_idx(files[image_name], (None, SIZE, SIZE), "uint8")
        labels = read_idx(files[label_name], (None,), "uint8")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{files[label_name]}: {labels.shape[0]} labels, but {files[image_name]} holds "
                             f"{images.shape[0]} images")
        if labels.max(initial=0) > 9:
            raise ValueError(f"{files[label_name]}: label {int(labels.max())} is outside [0, 10)")
        return images, labels

    # ------------------------------------------------------------------ cache
    def construction_params(self) -> dict:
        """Everything the built splits depend on, including the sha256 of each source file (computed once)."""
        if self._params is None:
            files = self.source_files()
            self._params = {
                "construction_version": CONSTRUCTION_VERSION, "variant": self.variant, "seed": self.seed,
                "n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test,
                "sources": {s: {n: _sha256(p) for n, p in sorted(f.items())} for s, f in sorted(files.items())}}
        return self._params

    @property
    def cache_dir(self) -> Path:
        key = hashlib.sha256(json.dumps(self.construction_params(), sort_keys=True).encode()).hexdigest()[:16]
        return Path(self.data_dir) / "multi_mnist" / key

    def describe(self) -> dict:
        """Plain-dict summary of the dataset variant for the run record."""
        files = {s: {n: str(p) for n, p in f.items()} for s, f in self.source_files().items()}
        return {"name": "multi_mnist", **self.construction_params(), "files": files, "normalize": self.normalize,
                "size": SIZE, "sizes": {s: len(d) for s, d in self.datasets.items()}}

    def _build(self) -> dict[str, dict[str, np.ndarray]]:
        pools: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for source in set(VARIANTS[self.variant]):
            stream = SOURCE_STREAMS[source]
            images, labels = self._load_source(source, "train")
            if self.n_val >= images.shape[0]:
                raise ValueError(f"{self.variant}: n_val={self.n_val} leaves no training item of the "
                                 f"{images.shape[0]} in {self.source_files()[source]['train-images-idx3-ubyte']}")
            chosen = split_indices(images.shape[0], self.seed, self.n_val, self.n_train, stream)
            test_images, test_labels = self._load_source(source, "test")
            test = _rng(self.seed, 2000 + stream).permutation(test_images.shape[0])[:self.n_test]
            pools[source] = {s: (images[i], labels[i]) for s, i in chosen.items()}
            pools[source]["test"] = (test_images[test], test_labels[test])
        left, right = VARIANTS[self.variant]
        return {split: build_split(pools[left][split], pools[right][split], self.seed, split) for split in SPLITS}

    def prepare_data(self) -> None:
        """Build the three splits and cache them, unless a complete cache exists."""
        cache = self.cache_dir
        if all((cache / f"{split}.npz").is_file() for split in SPLITS):
            return
        cache.mkdir(parents=True, exist_ok=True)
        for split, arrays in self._build().items():
            _atomic_write(cache / f"{split}.npz", lambda f, a=arrays: np.savez(f, **a))

    def _load_cached(self, split: str) -> dict[str, np.ndarray]:
        path = self.cache_dir / f"{split}.npz"
        try:
            with np.load(path) as f:
                arrays = {key: f[key] for key in ("image", "left", "right")}
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable cache ({exc}); delete the file to rebuild it") from exc
        n = arrays["image"].shape[0]
        if arrays["image"].dtype != np.uint8 or arrays["image"].shape[1:] != (SIZE, SIZE) or any(
                arrays[k].shape != (n,) or arrays[k].min(initial=0) < 0 or arrays[k].max(initial=0) > 9
                for k in ("left", "right")):
            raise ValueError(f"{path}: cached arrays do not hold N x {SIZE} x {SIZE} uint8 images with labels "
                             "in [0, 10); delete the file to rebuild it")
        return arrays

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        for split in SPLITS:
            if split not in self.datasets:
                self.datasets[split] = _MultiDataset(self._load_cached(split), self.normalize)
        if len(self.datasets["train"]) < self.batch_size:
            raise ValueError(f"{self.variant}: batch_size={self.batch_size} exceeds the "
                             f"{len(self.datasets['train'])} training images")

