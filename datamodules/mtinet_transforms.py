"""Vandenhende's MTI-Net / ASTMT sample transforms on a sample as read, with OpenCV as the reference runs them.

From ``data/custom_transforms.py`` of SimonVandenhende/Multi-Task-Learning-PyTorch, in its order:

* training only, :func:`scale_n_rotate`: ``RandomHorizontalFlip`` (normals' x negated), then ``ScaleNRotate``, one
  ``cv2.warpAffine`` by ``cv2.getRotationMatrix2D(centre, angle, scale)`` at the input size, zero outside the
  image; normals' in-plane component is rotated by the angle first, depth is divided by the scale;
* :func:`fixed_resize`: ``FixedResize`` (``cv2.resize``; a copy at the input size), then ``AddIgnoreRegions``' rule
  for human parts (an all-background map is ignored) and ``ToTensor``'s ``uint8`` cast of the image (the bicubic
  overshoot below 0 and above 255 truncated and wrapped, as there).

The image and the normals are resampled bicubic, every other target nearest (the reference's ``FLAGVALS``). The
normals come back unscaled: :func:`~datamodules.dense_io.warp` rescales them by ``|n| + eps``, as ``FixedResize``.
"""

from __future__ import annotations

import math

import numpy as np

NEAREST_KINDS = ("segmentation", "human_parts", "saliency", "edges", "depth")
Targets = dict[str, tuple[np.ndarray, str, int]]
"""task -> (H x W [x 3] array, kind, ignore_index), as the datamodules' ``_load`` returns them."""


def _check(name: str, kind: str) -> None:
    if kind != "normals" and kind not in NEAREST_KINDS:
        raise ValueError(f"mtinet transforms: task {name!r} has kind {kind!r}, which the reference does not resample")


def scale_n_rotate(image: np.ndarray, targets: Targets, flip: bool, angle_deg: float,
                   scale: float) -> tuple[np.ndarray, Targets]:
    """``image`` (H x W x 3) and ``targets`` after the reference's flip and ScaleNRotate: a float32 image, float32
    targets (an image without parts annotations: an all-0 parts map, as the reference loads it)."""
    import cv2

    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, scale)

    def flipped(arr: np.ndarray) -> np.ndarray:
        return cv2.flip(arr, flipCode=1) if flip else arr.copy()

    out_image = cv2.warpAffine(flipped(image.astype(np.float32)), m, (w, h), flags=cv2.INTER_CUBIC)
    out = {}
    for name, (arr, kind, ignore) in targets.items():
        _check(name, kind)
        if kind == "normals":
            n = flipped(arr.astype(np.float32))
            if flip:
                n[:, :, 0] *= -1
            in_plane, length = np.arctan2(n[:, :, 0], n[:, :, 1]), np.sqrt(n[:, :, 0] ** 2 + n[:, :, 1] ** 2)
            a = angle_deg * 2 * math.pi / 360
            n[:, :, 0], n[:, :, 1] = np.sin(in_plane + a) * length, np.cos(in_plane + a) * length
            out[name] = (cv2.warpAffine(n, m, (w, h), flags=cv2.INTER_CUBIC), kind, ignore)
            continue
        values = arr.astype(np.float32)
        if kind == "human_parts" and (values == ignore).all():
            values = np.zeros_like(values)
        s = cv2.warpAffine(flipped(values), m, (w, h), flags=cv2.INTER_NEAREST)
        out[name] = (s / scale if kind == "depth" else s, kind, ignore)
    return out_image, out


def fixed_resize(image: np.ndarray, targets: Targets, size: tuple[int, int]) -> tuple[np.ndarray, Targets]:
    """``image`` and ``targets`` resized to ``size`` (h, w) as the reference's FixedResize, with its ignore rule for
    human parts; the image comes back uint8 H x W x 3, each target in the dtype the datamodule loaded."""
    import cv2

    dsize = (size[1], size[0])
    out_image = cv2.resize(image.astype(np.float32), dsize, interpolation=cv2.INTER_CUBIC).astype(np.uint8)
    out = {}
    for name, (arr, kind, ignore) in targets.items():
        _check(name, kind)
        flags = cv2.INTER_CUBIC if kind == "normals" else cv2.INTER_NEAREST
        s = cv2.resize(arr.astype(np.float32), dsize, interpolation=flags)
        if kind == "human_parts" and not s.any():
            s = np.full_like(s, ignore)
        out[name] = (s.astype(np.int64 if kind in ("segmentation", "human_parts") else np.float32), kind, ignore)
    return out_image, out
