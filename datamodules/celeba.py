"""CelebA (Liu et al., ICCV 2015): 40 face attributes as 40 tasks, in the layout of the official distribution.

Files (docs/data.md §4.6), under ``root`` (``dataset.params.root`` or ``$MTOBENCH_CELEBA``):

* ``img_align_celeba/000001.jpg`` ... (the aligned and cropped 178x218 JPEGs);
* ``list_attr_celeba.txt`` (or ``Anno/list_attr_celeba.txt``): line 1 the image count, line 2 the 40 attribute
  names, then ``<file> <40 values of -1 or 1>`` per image; -1/1 become 0/1;
* ``list_eval_partition.txt`` (or ``Eval/list_eval_partition.txt``): ``<file> <0|1|2>`` = train/val/test.

Images are resized to ``image_size`` squared with PIL's bilinear filter and scaled to [0, 1] without
normalisation, as the FAMO CelebA protocol does (docs/protocols.md P6: ``Resize((64, 64))``, ``ToTensor``);
``preprocess="mgda_ub"`` is MGDA-UB's ``CELEBA.transform_img`` instead (:func:`mgda_ub_image`).
``kind="binary"`` gives one logit per attribute with BCE (FAMO); ``kind="classification"`` two logits with
cross-entropy (MGDA-UB, Sener & Koltun 2018, §5.2).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from datamodules.split_loaders import SplitLoaders
from datamodules.task_spec import TaskSpec

NUM_ATTRIBUTES = 40
SPLITS = ("train", "val", "test")
IMAGE_DIR = "img_align_celeba"
ATTR_FILE, PARTITION_FILE = "list_attr_celeba.txt", "list_eval_partition.txt"
LOCATIONS = {ATTR_FILE: ("", "Anno"), PARTITION_FILE: ("", "Eval")}
KINDS = ("binary", "classification")
PREPROCESS = ("totensor", "mgda_ub")
MGDA_UB_MEAN = np.array([73.15835921, 82.90891754, 72.39239876])
"""The per-channel mean MGDA-UB's loader subtracts, in its BGR order (``loaders/celeba_loader.py``)."""
HOW_TO_GET = (f"a folder with {IMAGE_DIR}/ (000001.jpg ...), {ATTR_FILE} and {PARTITION_FILE} (also accepted in "
              "Anno/ and Eval/, as distributed): the 'Align&Cropped Images' (img_align_celeba.zip), the attribute "
              "annotations and the evaluation partition of https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html; set "
              "dataset.params.root or the environment variable MTOBENCH_CELEBA to that folder")


def parse_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(attribute names, file names, N x 40 uint8 0/1 labels)`` from ``list_attr_celeba.txt``."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and an attribute-name line, found {len(lines)} lines")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{path}, line 1: expected the image count, got {lines[0].strip()!r}") from None
    names = lines[1].split()
    if len(names) != NUM_ATTRIBUTES or len(set(names)) != len(names):
        raise ValueError(f"{path}, line 2: expected {NUM_ATTRIBUTES} distinct attribute names, got {len(names)}: "
                         f"{' '.join(names[:5])} ...")
    rows = [(i, line.split()) for i, line in enumerate(lines[2:], start=3) if line.strip()]
    files, values = [], np.zeros((len(rows), NUM_ATTRIBUTES), dtype=np.uint8)
    for k, (i, fields) in enumerate(rows):
        if len(fields) != NUM_ATTRIBUTES + 1:
            raise ValueError(f"{path}, line {i}: expected a file name and {NUM_ATTRIBUTES} values, got "
                             f"{len(fields)} fields")
        if not fields[0].endswith(".jpg"):
            raise ValueError(f"{path}, line {i}: file name {fields[0]!r} does not end in .jpg")
        bad = [v for v in fields[1:] if v not in ("-1", "1")]
        if bad:
            raise ValueError(f"{path}, line {i}: attribute value {bad[0]!r} is not -1 or 1")
        files.append(fields[0])
        values[k] = [v == "1" for v in fields[1:]]
    if count != len(files):
        raise ValueError(f"{path}, line 1: the count says {count} images, but {len(files)} rows follow")
    if len(set(files)) != len(files):
        dup = next(f for i, f in enumerate(files) if f in files[:i])
        raise ValueError(f"{path}: file {dup} is listed twice")
    return names, files, values


def parse_partition(path: Path) -> dict[str, int]:
    """``{file: 0 | 1 | 2}`` from ``list_eval_partition.txt``."""
    out: dict[str, int] = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}, line {i}: expected '<file> <0|1|2>', got {line.strip()!r}")
        if fields[0] in out:
            raise ValueError(f"{path}, line {i}: file {fields[0]} is listed twice")
        out[fields[0]] = int(fields[1])
    return out


def mgda_ub_image(rgb: Image.Image, size: int) -> np.ndarray:
    """MGDA-UB's ``transform_img`` (intel-isl/MultiObjectiveOptimization, ``loaders/celeba_loader.py``): BGR, minus
    :data:`MGDA_UB_MEAN`, then ``scipy.misc.imresize`` (removed from SciPy; its documented steps: ``bytescale``
    stretches the array's min..max to 0..255, rounded, then PIL's bilinear resize), / 255; H x W x 3 float64."""
    bgr = np.asarray(rgb, dtype=np.float64)[:, :, ::-1] - MGDA_UB_MEAN
    low, span = bgr.min(), bgr.max() - bgr.min()
    stretched = (((bgr - low) * (255.0 / (span or 1.0))).clip(0, 255) + 0.5).astype(np.uint8)
    resized = Image.fromarray(np.ascontiguousarray(stretched), "RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float64) / 255.0


class _CelebADataset(Dataset):
    """Decodes ``folder/files[i]`` on access; targets are ``{attribute: 0-dim tensor}``."""

    def __init__(self, folder: Path, files: list[str], labels: np.ndarray, names: list[str], size: int, kind: str,
                 preprocess: str = "totensor"):
        self.folder, self.files, self.names, self.size, self.preprocess = folder, files, names, size, preprocess
        dtype = torch.float32 if kind == "binary" else torch.int64
        self.labels = torch.from_numpy(labels).to(dtype)

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, i: int) -> torch.Tensor:
        path = self.folder / self.files[i]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
                if self.preprocess == "mgda_ub":
                    return torch.from_numpy(mgda_ub_image(rgb, self.size)).permute(2, 0, 1).float().contiguous()
                rgb = rgb.resize((self.size, self.size), Image.Resampling.BILINEAR)
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"{path}: cannot decode the image: {exc}") from exc
        return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()

    def __getitem__(self, i: int) -> dict:
        row = self.labels[i]
        return {"image": self.load_image(i), "targets": {n: row[k] for k, n in enumerate(self.names)}}


class CelebADataModule(SplitLoaders):
    """CelebA's 40 attributes as ``binary`` (or 2-class ``classification``) tasks on the official partition."""

    def __init__(self, batch_size: int = 256, root: str | None = None, image_size: int = 64, kind: str = "binary",
                 attributes: list[str] | None = None, n_train: int | None = None, n_val: int | None = None,
                 n_test: int | None = None, seed: int = 0, num_workers: int = 0, preprocess: str = "totensor"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"CelebADataModule: kind={kind!r} is not one of {KINDS}")
        if preprocess not in PREPROCESS:
            raise ValueError(f"CelebADataModule: preprocess={preprocess!r} is not one of {PREPROCESS}")
        self.preprocess = preprocess
        for name, value, low, optional in (("batch_size", batch_size, 1, False), ("image_size", image_size, 8, False),
                                           ("n_train", n_train, 1, True), ("n_val", n_val, 1, True),
                                           ("n_test", n_test, 1, True), ("seed", seed, 0, False),
                                           ("num_workers", num_workers, 0, False)):
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"CelebADataModule: {name}={value!r} must be an integer >= {low}"
                                 + (" or null" if optional else ""))
        if attributes is not None and (not attributes or len(set(attributes)) != len(attributes)):
            raise ValueError(f"CelebADataModule: attributes={attributes!r} must be a non-empty list of distinct names")
        self.save_hyperparameters()
        self.root_param, self.image_size, self.kind, self.seed = root, image_size, kind, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.limits = {"train": n_train, "val": n_val, "test": n_test}
        self.datasets: dict[str, _CelebADataset] = {}
        self.paths: dict[str, Path] = {}
        self.selected: list[str] = []
        self._read_annotations(attributes)

    @property
    def root(self) -> tuple[Path, str]:
        if self.root_param:
            return Path(self.root_param), "dataset.params.root"
        if os.environ.get("MTOBENCH_CELEBA"):
            return Path(os.environ["MTOBENCH_CELEBA"]), "$MTOBENCH_CELEBA"
        raise FileNotFoundError(f"celeba: no CelebA folder given; it needs {HOW_TO_GET}")

    def _locate(self) -> dict[str, Path]:
        root, origin = self.root
        found = {IMAGE_DIR: root / IMAGE_DIR if (root / IMAGE_DIR).is_dir() else None}
        for name, subdirs in LOCATIONS.items():
            found[name] = next((root / d / name for d in subdirs if (root / d / name).is_file()), None)
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise FileNotFoundError(f"celeba: folder {root} (from {origin}) lacks {', '.join(missing)}; "
                                    f"it needs {HOW_TO_GET}")
        return found

    def _read_annotations(self, attributes: list[str] | None) -> None:
        """Parse and cross-check the annotation files (the tasks must be known at construction)."""
        self.paths = self._locate()
        names, files, labels = parse_attributes(self.paths[ATTR_FILE])
        partition = parse_partition(self.paths[PARTITION_FILE])
        listed = set(files)
        only_attr = [f for f in files if f not in partition]
        only_part = [f for f in partition if f not in listed]
        if only_attr or only_part:
            which = (f"{only_attr[0]} is in {self.paths[ATTR_FILE]} but not in {self.paths[PARTITION_FILE]}"
                     if only_attr else f"{only_part[0]} is in {self.paths[PARTITION_FILE]} but not in "
                     f"{self.paths[ATTR_FILE]}")
            raise ValueError(f"celeba: the annotation files list different images ({len(only_attr)} only in the "
                             f"attributes, {len(only_part)} only in the partition): {which}")
        unknown = [a for a in attributes or [] if a not in names]
        if unknown:
            raise ValueError(f"CelebADataModule: attributes {unknown} are not in {self.paths[ATTR_FILE]}; "
                             f"valid: {names}")
        self.selected = list(attributes or names)
        columns = [names.index(a) for a in self.selected]
        split_of = np.array([partition[f] for f in files])
        self.split_rows = {}
        for k, split in enumerate(SPLITS):
            rows = np.flatnonzero(split_of == k)[:self.limits[split]]
            if rows.size == 0:
                raise ValueError(f"celeba: {self.paths[PARTITION_FILE]} assigns no image to split {k} ({split})")
            self.split_rows[split] = rows
        self.files, self.labels = files, labels[:, columns]
        self.tasks = [TaskSpec(a, self.kind, num_classes=2 if self.kind == "classification" else None)
                      for a in self.selected]

    @property
    def SCORED_METRICS(self) -> tuple[str, ...] | None:  # noqa: N802 (the datamodules' declared-set attribute)
        """Binary attributes: Δm over the 40 F1 values, as FAMO (docs/protocols.md P6); else every metric."""
        return tuple(f"{a}/f1" for a in self.selected) if self.kind == "binary" else None

    def describe(self) -> dict:
        """Plain-dict summary for the run record."""
        return {"name": "celeba", "root": str(self.root[0]), "files": {k: str(v) for k, v in self.paths.items()},
                "image_size": self.image_size, "kind": self.kind, "preprocess": self.preprocess,
                "attributes": self.selected,
                "sizes": {s: int(r.size) for s, r in self.split_rows.items()}, "limits": self.limits}

    def prepare_data(self) -> None:
        """Check that every image of the used splits exists (one directory listing)."""
        folder = self.paths[IMAGE_DIR]
        present = set(os.listdir(folder))
        for split, rows in self.split_rows.items():
            missing = [self.files[r] for r in rows if self.files[r] not in present]
            if missing:
                raise FileNotFoundError(f"celeba: {len(missing)} {split} images listed in {self.paths[ATTR_FILE]} "
                                        f"are missing from {folder}, e.g. {missing[0]}")

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepare_data()
        for split, rows in self.split_rows.items():
            self.datasets[split] = _CelebADataset(self.paths[IMAGE_DIR], [self.files[r] for r in rows],
                                                  self.labels[rows], self.selected, self.image_size, self.kind,
                                                  self.preprocess)
        if len(self.datasets["train"]) < self.batch_size:
            raise ValueError(f"celeba: batch_size={self.batch_size} exceeds the {len(self.datasets['train'])} "
                             "training images; with drop_last=True there would be no training batch")
