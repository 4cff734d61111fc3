"""A tiny learnable MNIST in the release format (four gzipped IDX files) and the seed recipe of the MultiLeNet
replays (tests/test_reference_mgda_ub.py; docs/protocols.md P7).

Every image is a class template plus noise, so a LeNet learns something in a few steps; each holds one 255 pixel
and the canvas corners are 0, so scipy 1.0's ``imresize`` (used by the reference loader) rescales nothing.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic ``00 00 08 <ndim>``, big-endian uint32 dimensions, the bytes."""
    return bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()


def mnist_arrays(n_train: int, n_test: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images N x 28 x 28 uint8, labels N uint8), "test": ...}``, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    templates = (rng.random((10, 28, 28)) < 0.25) * 200.0
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = np.clip(templates[labels] + rng.normal(0, 40, size=(n, 28, 28)), 0, 254).astype(np.uint8)
        images[np.arange(n), rng.integers(4, 24, n), rng.integers(4, 24, n)] = 255
        out[split] = (images, labels)
    return out


def write_mnist(root: Path, n_train: int, n_test: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four ``*-ubyte.gz`` files of :func:`mnist_arrays` in ``root`` (created); returns the arrays."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = mnist_arrays(n_train, n_test, seed)
    for split, (image_name, label_name) in FILES.items():
        for name, array in ((image_name, arrays[split][0]), (label_name, arrays[split][1])):
            (root / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array), mtime=0))
    return arrays


def uniform_recipe_(named: dict[str, torch.nn.Parameter]) -> None:
    """The initial weights both sides load, keyed by the *reference* name: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    (PyTorch's default bound) from ``torch.Generator().manual_seed(crc32(name))``; a bias takes the fan-in of
    the weight of the same layer."""
    fan_in = {name.removesuffix(".weight"): math.prod(p.shape[1:]) for name, p in named.items()
              if name.endswith(".weight")}
    with torch.no_grad():
        for name, p in named.items():
            bound = 1.0 / math.sqrt(fan_in[name.rsplit(".", 1)[0]])
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1).mul(bound).to(p.dtype))
