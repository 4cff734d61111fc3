"""Writers of MTAN-layout fixtures (docs/data.md §4.7): random arrays with the release's shapes, dtypes, sentinels
and folder names, small enough for tests. No real data is shipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _image(rng: np.random.Generator, h: int, w: int, dtype) -> np.ndarray:
    return (rng.integers(0, 256, (h, w, 3)) / 255.0).astype(dtype)


def _label(rng: np.random.Generator, h: int, w: int, classes: int, dtype) -> np.ndarray:
    label = rng.integers(0, classes, (h, w)).astype(dtype)
    label[rng.random((h, w)) < 0.1] = -1
    return label


def _depth(rng: np.random.Generator, h: int, w: int, low: float, high: float, dtype) -> np.ndarray:
    depth = rng.uniform(low, high, (h, w, 1)).astype(dtype)
    depth[rng.random((h, w)) < 0.05] = 0
    return depth


def _normal(rng: np.random.Generator, depth: np.ndarray, dtype) -> np.ndarray:
    n = rng.normal(size=depth.shape[:2] + (3,))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[depth[..., 0] == 0] = 0
    return n.astype(dtype)


def write_nyuv2(root: Path, n_train: int = 4, n_val: int = 3, height: int = 288, width: int = 384, seed: int = 0,
                dtype=np.float64) -> Path:
    """``root/{train,val}/{image,label,depth,normal}/<i>.npy`` as in the MTAN NYUv2 release; returns root."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for folder in ("image", "label", "depth", "normal"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            depth = _depth(rng, height, width, 0.5, 8.0, dtype)
            arrays = {"image": _image(rng, height, width, dtype), "label": _label(rng, height, width, 13, dtype),
                      "depth": depth, "normal": _normal(rng, depth, dtype)}
            for folder, array in arrays.items():
                np.save(root / split / folder / f"{i}.npy", array)
    return root


def write_cityscapes(root: Path, n_train: int = 4, n_val: int = 3, height: int = 128, width: int = 256,
                     seed: int = 0, label_folders: tuple[str, ...] = ("label_7",), dtype=np.float64) -> Path:
    """``root/{train,val}/{image,<label_folders>,depth}/<i>.npy`` as in the MTAN Cityscapes release (inverse
    depth in [0, 0.49], 0 invalid); ``label_2``/``label_19`` folders get 2/19 classes, the others 7."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for folder in ("image", "depth", *label_folders):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", _image(rng, height, width, dtype))
            np.save(root / split / "depth" / f"{i}.npy", _depth(rng, height, width, 0.01, 0.49, dtype))
            for folder in label_folders:
                classes = {"label_2": 2, "label_19": 19}.get(folder, 7)
                np.save(root / split / folder / f"{i}.npy", _label(rng, height, width, classes, dtype))
    return root
