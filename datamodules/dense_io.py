"""Shared pieces of the NYUD-v2 and PASCAL-Context loaders: root discovery, file readers that validate what they
read (errors name the file, the field and the value), the seeded per-sample augmentation warp and an epoch-aware
shuffling sampler. Conventions are those of ``TaskSpec`` (docs/data.md §4.3-4.4; docs/protocols.md P3, P5)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABEL_KINDS = ("segmentation", "human_parts", "saliency", "edges")
"""Target kinds resampled with nearest neighbour whose pixels outside the image become ``ignore_index``."""


class MissingDataError(FileNotFoundError):
    """The dataset is not where the config or the environment says."""


def missing_data_message(dataset: str, problem: str, archive: str, layout: str, env: str) -> str:
    return (f"{dataset}: {problem}.\nGet the archive from {archive}, unpack it, and point "
            f"`dataset.params.root` (or the environment variable {env}) at the folder that holds it.\n"
            f"Expected layout:\n{layout}")


def resolve_root(root: str | None, env: str, inner: str, marker: str, dataset: str, archive: str,
                 layout: str) -> Path:
    """The dataset folder: ``root`` (else ``$env``) itself or its subfolder ``inner``, whichever holds ``marker``."""
    given = root if root else os.environ.get(env)
    if not given:
        raise MissingDataError(missing_data_message(dataset, f"no root given (dataset.params.root is unset and "
                                                    f"${env} is empty)", archive, layout, env))
    base = Path(given).expanduser()
    if not base.is_dir():
        raise MissingDataError(missing_data_message(dataset, f"root {base} does not exist", archive, layout, env))
    for candidate in (base, base / inner):
        if (candidate / marker).is_dir():
            return candidate
    raise MissingDataError(missing_data_message(
        dataset, f"neither {base / marker} nor {base / inner / marker} exists", archive, layout, env))


def read_split(path: Path, expected: int | None, dataset: str) -> list[str]:
    """Ids listed one per line in ``path``; with ``expected`` set, the count must match."""
    if not path.is_file():
        raise MissingDataError(f"{dataset}: split file {path} does not exist")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{dataset}: split file {path} lists no ids")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{dataset}: split file {path} lists an id more than once")
    if expected is not None and len(ids) != expected:
        raise ValueError(f"{dataset}: split file {path} lists {len(ids)} ids, expected {expected} "
                         "(set dataset.params.strict_sizes=false for a subset)")
    return ids


def require_files(paths: Sequence[Path], dataset: str, field: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise MissingDataError(f"{dataset}: {field} file {missing[0]} does not exist{more}")


def _open_image(path: Path, field: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{path}: field {field!r}: cannot decode the image ({exc})") from exc


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8."""
    arr = _open_image(path, "image")
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"{path}: field 'image': expected an RGB uint8 image (H, W, 3), got shape {arr.shape} "
                         f"dtype {arr.dtype}")
    return arr


def read_png(path: Path, field: str, channels: int | None = None) -> np.ndarray:
    """uint8 PNG: H x W (``channels`` None) or H x W x ``channels``."""
    arr = _open_image(path, field)
    want = (2,) if channels is None else (3,)
    if arr.dtype != np.uint8 or arr.ndim not in want or (channels is not None and arr.shape[2] != channels):
        shape = "(H, W)" if channels is None else f"(H, W, {channels})"
        raise ValueError(f"{path}: field {field!r}: expected a uint8 image {shape}, got shape {arr.shape} "
                         f"dtype {arr.dtype}")
    return arr


def read_npy(path: Path, field: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: field {field!r}: cannot read the .npy file ({exc})") from exc


def check_shape(arr: np.ndarray, path: Path, field: str, hw: tuple[int, int], trailing: tuple[int, ...] = ()) -> None:
    """``arr`` must be ``hw + trailing`` (the image's height and width, then channels)."""
    if arr.shape != (*hw, *trailing):
        raise ValueError(f"{path}: field {field!r}: shape {arr.shape} does not match the image's "
                         f"{(*hw, *trailing)}")


def check_values(arr: np.ndarray, path: Path, field: str, allowed: str, ok: np.ndarray) -> None:
    """``ok`` is the element-wise validity of ``arr``; the first offending value is named."""
    if not ok.all():
        bad = arr[~ok].flat[0]
        raise ValueError(f"{path}: field {field!r}: value {bad} is outside {allowed}")


def check_float(arr: np.ndarray, path: Path, field: str) -> None:
    if arr.dtype.kind != "f":
        raise ValueError(f"{path}: field {field!r}: dtype {arr.dtype} is not a float dtype")
    check_values(arr, path, field, "the finite numbers", np.isfinite(arr))


NORMAL_EPS = float(np.finfo(np.float32).eps)
"""Normals are rescaled by ``|n| + NORMAL_EPS``, as Vandenhende's ``FixedResize`` does: a short vector (bicubic
resampling next to an invalid region) stays shorter than 1."""


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation randomness of one sample: a pure function of (run seed, epoch, sample index)."""
    return np.random.default_rng([seed, epoch, index])


def affine(scale: float = 1.0, angle_deg: float = 0.0, flip: bool = False, shift: tuple[float, float] = (0.0, 0.0),
           aspect: float = 1.0) -> torch.Tensor:
    """2 x 3 ``theta`` for ``F.affine_grid``: output -> input normalised coordinates.

    The output shows the input scaled by ``scale`` and rotated by ``angle_deg`` (counter-clockwise, in pixels,
    ``aspect`` = width / height of the input) about the point ``shift`` of the input, then mirrored left-right
    if ``flip``.
    """
    a = math.radians(angle_deg)
    d = torch.tensor([[aspect, 0.0], [0.0, 1.0]], dtype=torch.float64)
    rot = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64)
    m = torch.linalg.inv(d) @ rot @ d / scale
    if flip:
        m = m @ torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64))
    return torch.cat([m, torch.tensor(shift, dtype=torch.float64).view(2, 1)], dim=1).float()


def warp(image: np.ndarray, targets: dict[str, tuple[np.ndarray, str, int]], theta: torch.Tensor,
         size: tuple[int, int], flip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Resample a sample onto an ``size`` grid through ``theta`` (see :func:`affine`).

    ``image`` H x W x 3 uint8 -> 3 x h x w float in [0, 1] (bilinear in float64, border pixels replicated, so that an
    identity warp gives the float32 x / 255 of Vandenhende's ``ToTensor`` exactly). ``targets``
    maps a task to (array H x W [x C], kind, ignore_index): nearest neighbour; outside the input, labels become
    ``ignore_index`` and depth / normals 0 (invalid). Label kinds come back int64 h x w (segmentation,
    human_parts) or float 1 x h x w (saliency, edges); depth 1 x h x w; normals 3 x h x w, x negated when ``flip``,
    divided by ``|n| + NORMAL_EPS`` (the zero vector stays zero).
    """
    h, w = size
    grid = F.affine_grid(theta.double().unsqueeze(0), [1, 1, h, w], align_corners=False)
    img = torch.tensor(image).permute(2, 0, 1).double().unsqueeze(0) / 255.0
    out_image = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)[0].float()
    out = {}
    for name, (arr, kind, ignore) in targets.items():
        t = torch.tensor(arr, dtype=torch.float64)
        t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
        if kind in LABEL_KINDS:
            t = torch.where(t == ignore, 0.0, t + 1.0)
        s = F.grid_sample(t.unsqueeze(0), grid.double(), mode="nearest", padding_mode="zeros",
                          align_corners=False)[0]
        if kind in LABEL_KINDS:
            s = torch.where(s == 0, float(ignore), s - 1.0)
            out[name] = s[0].round().long() if kind in ("segmentation", "human_parts") else s.float()
        elif kind == "normals":
            if flip:
                s[0] = -s[0]
            out[name] = (s / (s.norm(dim=0, keepdim=True) + NORMAL_EPS)).float()
        else:
            out[name] = s.float()
    return out_image, out


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """ImageNet mean / std normalisation (Vandenhende's ``Normalize``)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image - mean) / std
