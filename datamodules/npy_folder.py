"""Folders of per-sample ``.npy`` files (the MTAN release layout, docs/data.md §4.1-4.2): root discovery, layout and
header checks at setup, full value checks per loaded array, and "data missing" messages.

Every error names the file (or folder) and the field. Nothing here writes into the dataset folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A dataset file or folder does not have the expected layout, shape, dtype or values."""


class DataMissingError(FileNotFoundError):
    """The dataset root is not given or does not exist; the message says how to obtain it."""


@dataclass(frozen=True)
class DatasetSource:
    """Where users get a dataset, for the "data missing" message."""

    name: str
    archive: str
    url: str
    layout: str
    env_var: str


def missing_message(source: DatasetSource, problem: str) -> str:
    return (f"{source.name}: {problem}.\n"
            f"  Obtain {source.archive} from {source.url}, unpack it, and point the suite at the folder with "
            f"dataset.params.root (e.g. --suite.dataset.params.root=/data/{source.name}) or the environment "
            f"variable {source.env_var}.\n  Expected layout:\n{source.layout}")


def resolve_root(root: str | os.PathLike | None, source: DatasetSource, marker: str = "train") -> Path:
    """``root`` (else ``$env_var``) as given, or its single subfolder holding ``marker`` (e.g. ``nyuv2/train``)."""
    origin = "dataset.params.root"
    if root is None:
        root, origin = os.environ.get(source.env_var), source.env_var
    if not root:
        raise DataMissingError(missing_message(source, f"no data folder given (dataset.params.root is not set and "
                                                       f"{source.env_var} is empty)"))
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataMissingError(missing_message(source, f"{origin}={str(root)!r}: folder {path} does not exist"))
    if (path / marker).is_dir():
        return path
    nested = [p for p in sorted(path.iterdir()) if p.is_dir() and (p / marker).is_dir()]
    if len(nested) == 1:
        return nested[0]
    found = sorted(p.name for p in path.iterdir())[:10]
    raise DataMissingError(missing_message(
        source, f"{origin}={str(root)!r}: folder {path} has no '{marker}/' subfolder, nor a single subfolder that "
                f"has one (it contains {found})"))


def npy_indices(folder: Path, field: str) -> list[int]:
    """The sample indices ``i`` of ``folder/<i>.npy``, in numeric order (``10.npy`` after ``2.npy``)."""
    if not folder.is_dir():
        raise DataError(f"field {field!r}: folder {folder} does not exist")
    indices = []
    for path in folder.glob("*.npy"):
        if not path.stem.isdigit():
            raise DataError(f"field {field!r}: file {path} is not named <integer>.npy")
        indices.append(int(path.stem))
    if not indices:
        raise DataError(f"field {field!r}: folder {folder} has no .npy files")
    return sorted(indices)


def matched_indices(split_dir: Path, folders: dict[str, str]) -> list[int]:
    """The common sample indices of ``split_dir/<folder>/`` for every ``field -> folder``; they must agree."""
    per_field = {field: npy_indices(split_dir / folder, field) for field, folder in folders.items()}
    (first, reference), *others = per_field.items()
    for field, indices in others:
        if indices != reference:
            extra = sorted(set(indices) - set(reference))
            lacking = sorted(set(reference) - set(indices))
            detail = (f"{split_dir / folders[field] / f'{extra[0]}.npy'} has no match in {folders[first]}/"
                      if extra else f"{split_dir / folders[field] / f'{lacking[0]}.npy'} is missing")
            raise DataError(f"field {field!r}: file indices of {split_dir / folders[field]} differ from those of "
                            f"{split_dir / folders[first]} ({len(indices)} vs {len(reference)} files): {detail}")
    return reference


@dataclass(frozen=True)
class ArraySpec:
    """What one field's ``.npy`` must hold: shape, dtype kinds (``"f"`` float, ``"i"`` signed int) and values.

    ``values``: ``"unit"`` in [0, 1]; ``"nonneg"`` >= 0; ``"signed_unit"`` in [-1, 1] (1e-3 slack);
    ``"labels"`` integer-valued in [0, num_classes) or ``ignore_index``.
    """

    field: str
    shape: tuple[int, ...]
    kinds: str
    values: str
    num_classes: int = 0
    ignore_index: int = -1


def read_header(path: Path, field: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the ``.npy`` header; a truncated or unreadable file is an error naming it."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError) as exc:
        raise DataError(f"field {field!r}: file {path} is not a readable .npy file ({exc})") from exc
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if dtype.hasobject or path.stat().st_size != expected:
        raise DataError(f"field {field!r}: file {path} is corrupt: {path.stat().st_size} bytes, its header "
                        f"{shape} {dtype} needs {expected}")
    return tuple(shape), dtype


def check_header(path: Path, spec: ArraySpec) -> None:
    shape, dtype = read_header(path, spec.field)
    if shape != spec.shape:
        raise DataError(f"field {spec.field!r}: file {path} has shape {shape}, expected {spec.shape}")
    if dtype.kind not in spec.kinds:
        raise DataError(f"field {spec.field!r}: file {path} has dtype {dtype}, expected {_kinds(spec.kinds)}")


def load_array(path: Path, spec: ArraySpec) -> np.ndarray:
    """Load one file and check its shape, dtype and values; errors name the file, the field and the value."""
    check_header(path, spec)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"field {spec.field!r}: file {path} cannot be read ({exc})") from exc
    check_values(array, spec, path)
    return array


def check_values(array: np.ndarray, spec: ArraySpec, path: Path | str) -> None:
    if not np.isfinite(array).all():
        raise DataError(f"field {spec.field!r}: file {path} has {int((~np.isfinite(array)).sum())} non-finite values")
    low, high = float(array.min()), float(array.max())
    if spec.values == "labels":
        if not np.array_equal(array, np.round(array)):
            raise DataError(f"field {spec.field!r}: file {path} has non-integer label values")
        bad = (array != spec.ignore_index) & ((array < 0) | (array >= spec.num_classes))
        if bad.any():
            raise DataError(f"field {spec.field!r}: file {path} has label {float(array[bad][0]):g} outside "
                            f"[0, {spec.num_classes}) and != ignore {spec.ignore_index}")
        return
    bounds = {"unit": (0.0, 1.0), "nonneg": (0.0, np.inf), "signed_unit": (-1.001, 1.001)}[spec.values]
    if low < bounds[0] or high > bounds[1]:
        raise DataError(f"field {spec.field!r}: file {path} has values in [{low:g}, {high:g}], expected "
                        f"[{bounds[0]:g}, {bounds[1]:g}]")


def _kinds(kinds: str) -> str:
    return " or ".join({"f": "a float dtype", "i": "a signed integer dtype"}[k] for k in kinds)
