"""Lightning datamodule for the procedural "synthetic scenes" dense multi-task dataset (docs/data.md §3).

Three tasks: 8-class semantic segmentation (ignore -1), z-depth in metres (0 invalid) and camera-frame
unit normals (zero vector invalid), all NYUv2 conventions. Splits are generated once with a process pool
and cached as compressed ``.npz`` files keyed by generator version, NumPy version and every generation
parameter (docs/data.md §3.2, §3.11); a ``manifest.json`` holds their sha256 checksums.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
import zipfile
from pathlib import Path

import lightning
import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, Dataset

from datamodules.sampling import EpochShuffleSampler
from datamodules.scene_render import CLASS_NAMES, GENERATOR_VERSION, render_quantised
from datamodules.task_spec import TaskSpec

SPLITS = ("train", "val", "test")
DEPTH_UNIT = 1e-4
TYPICAL_DEPTH = 3.0
"""Metres; the median valid depth of the generated rooms is about 3.1 m. Where the depth head's bias starts."""
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder and ``os.replace`` it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _SceneDataset(Dataset):
    """In-memory tensors; items are ``{"image": 3xHxW, "targets": {"semseg", "depth", "normal"}}``."""

    def __init__(self, image: torch.Tensor, semseg: torch.Tensor, depth: torch.Tensor, normal: torch.Tensor):
        self.image, self.semseg, self.depth, self.normal = image, semseg, depth, normal

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getitem__(self, i: int) -> dict:
        targets = {"semseg": self.semseg[i], "depth": self.depth[i], "normal": self.normal[i]}
        return {"image": self.image[i], "targets": targets}


def decode_split(arrays: dict[str, np.ndarray]) -> _SceneDataset:
    """Stored compact arrays -> float32/int64 tensors; normals are renormalised after float16 storage."""
    normal = torch.from_numpy(arrays["normal"].astype(np.float32))
    length = normal.norm(dim=1, keepdim=True)
    normal = torch.where(length > 0, normal / length.clamp_min(1e-12), torch.zeros_like(normal))
    return _SceneDataset(
        torch.from_numpy(arrays["image"].astype(np.float32) / 255.0),
        torch.from_numpy(arrays["label"].astype(np.int64)),
        torch.from_numpy((arrays["depth"].astype(np.float64) * DEPTH_UNIT).astype(np.float32)),
        normal,
    )


class SyntheticScenesDataModule(lightning.LightningDataModule):
    """Procedural indoor scenes with segmentation, depth and normals targets (docs/data.md §3)."""

    def __init__(self, data_dir: str = "data", height: int = 64, width: int = 96, n_train: int = 512,
                 n_val: int = 128, n_test: int = 128, seed: int = 0, supersample: int = 2,
                 batch_size: int = 16, num_workers: int = 0, generate_workers: int = 2):
        super().__init__()
        for name, value, low in (("height", height, 8), ("width", width, 8), ("n_train", n_train, 1),
                                 ("n_val", n_val, 1), ("n_test", n_test, 1), ("seed", seed, 0),
                                 ("supersample", supersample, 1), ("batch_size", batch_size, 1),
                                 ("num_workers", num_workers, 0), ("generate_workers", generate_workers, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SyntheticScenesDataModule: {name}={value!r} must be an integer >= {low}")
        if supersample > 4:
            raise ValueError(f"SyntheticScenesDataModule: supersample={supersample!r} must be at most 4")
        if batch_size > n_train:
            raise ValueError(f"SyntheticScenesDataModule: batch_size={batch_size} exceeds n_train={n_train}; "
                             "with drop_last=True there would be no training batch")
        self.save_hyperparameters()
        self.data_dir, self.height, self.width, self.supersample = data_dir, height, width, supersample
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.seed, self.batch_size = seed, batch_size
        self.num_workers, self.generate_workers = num_workers, generate_workers
        self.tasks: list[TaskSpec] = [TaskSpec("semseg", "segmentation", num_classes=8, ignore_index=-1),
                                      TaskSpec("depth", "depth", output_bias=TYPICAL_DEPTH),
                                      TaskSpec("normal", "normals")]
        self.datasets: dict[str, _SceneDataset] = {}

    def generation_params(self) -> dict:
        return {"generator_version": GENERATOR_VERSION, "numpy": np.__version__, "seed": self.seed,
                "height": self.height, "width": self.width, "supersample": self.supersample,
                "sizes": self.sizes}

    @property
    def cache_key(self) -> str:
        return hashlib.sha256(json.dumps(self.generation_params(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def cache_dir(self) -> Path:
        return Path(self.data_dir) / "synthetic_scenes" / self.cache_key

    def describe(self) -> dict:
        """Plain-dict summary of the dataset variant for the run record."""
        return {"name": "synthetic_scenes", "variant": "shape", "class_names": list(CLASS_NAMES),
                **self.generation_params(), "cache_key": self.cache_key}

    def _read_manifest(self) -> dict:
        try:
            manifest = json.loads((self.cache_dir / MANIFEST).read_text())
            return manifest if isinstance(manifest.get("files"), dict) else {"files": {}}
        except (OSError, ValueError, AttributeError):
            return {"files": {}}

    def _stale_splits(self) -> dict[str, str]:
        """Splits whose cache file must be (re)generated, with the reason."""
        files, stale = self._read_manifest()["files"], {}
        for split in SPLITS:
            path = self.cache_dir / f"{split}.npz"
            if not path.exists():
                stale[split] = "missing"
            elif files.get(path.name) != _sha256(path):
                stale[split] = "checksum mismatch, file corrupt" if path.name in files else "not in manifest"
        return stale

    def _generate(self, splits: list[str]) -> dict[str, dict[str, np.ndarray]]:
        jobs = [(self.seed, SPLITS.index(split), i, self.height, self.width, self.supersample)
                for split in splits for i in range(self.sizes[split])]
        columns = (TextColumn("synthetic scenes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        if self.generate_workers == 1:
            samples = []
            with Progress(*columns) as progress:
                bar = progress.add_task("render", total=len(jobs))
                for job in jobs:
                    samples.append(render_quantised(job))
                    progress.advance(bar)
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with multiprocessing.get_context(method).Pool(self.generate_workers) as pool:
                results = pool.imap(render_quantised, jobs, chunksize=8)
                samples = []
                with Progress(*columns) as progress:
                    bar = progress.add_task("render", total=len(jobs))
                    for sample in results:
                        samples.append(sample)
                        progress.advance(bar)
        out, start = {}, 0
        for split in splits:
            chunk = samples[start:start + self.sizes[split]]
            start += self.sizes[split]
            out[split] = {key: np.stack([s[key] for s in chunk]) for key in chunk[0]}
        return out

    def prepare_data(self) -> None:
        """Generate missing or corrupt cached splits (verified against ``manifest.json``)."""
        stale = self._stale_splits()
        if not stale:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for split, reason in stale.items():
            print(f"synthetic_scenes: generating {self.cache_dir / f'{split}.npz'} ({reason})")
        arrays = self._generate(list(stale))
        manifest = self._read_manifest()
        manifest["params"] = self.generation_params()
        for split, data in arrays.items():
            path = self.cache_dir / f"{split}.npz"
            _atomic_write(path, lambda f, data=data: np.savez_compressed(f, **data))
            manifest["files"][path.name] = _sha256(path)
        _atomic_write(self.cache_dir / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2).encode()))

    def load_split(self, split: str) -> dict[str, np.ndarray]:
        """The cached compact arrays of one split (uint8 image, int8 label, uint32 depth in 0.1 mm, float16),
        checked: a bad file raises ``ValueError`` naming it, the array and what was expected."""
        path = self.cache_dir / f"{split}.npz"
        try:
            with np.load(path) as f:
                arrays = {key: f[key] for key in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"synthetic_scenes: cannot read {path}: {exc}; delete it to regenerate") from exc
        n, h, w = self.sizes[split], self.height, self.width
        expected = {"image": (np.uint8, (n, 3, h, w)), "label": (np.int8, (n, h, w)),
                    "depth": (np.uint32, (n, 1, h, w)), "normal": (np.float16, (n, 3, h, w))}
        if set(arrays) != set(expected):
            raise ValueError(f"synthetic_scenes: {path} holds arrays {sorted(arrays)}, expected {sorted(expected)}")
        for key, (dtype, shape) in expected.items():
            if arrays[key].dtype != dtype or arrays[key].shape != shape:
                raise ValueError(f"synthetic_scenes: {path} array {key!r} is {arrays[key].dtype} {arrays[key].shape}, "
                                 f"expected {np.dtype(dtype)} {shape}")
        label = arrays["label"]
        bad = (label != -1) & ((label < 0) | (label >= len(CLASS_NAMES)))
        if bad.any():
            raise ValueError(f"synthetic_scenes: {path} array 'label' has {int(bad.sum())} values outside "
                             f"[0, {len(CLASS_NAMES)}) and not the ignore index -1, e.g. {int(label[bad][0])}")
        return arrays

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        for split in SPLITS:
            if split not in self.datasets:
                self.datasets[split] = decode_split(self.load_split(split))

    def _loader(self, split: str, shuffle: bool, seed: int | None = None) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        seed = self.seed if seed is None else seed
        sampler = EpochShuffleSampler(len(self.datasets[split]), seed) if shuffle else None
        return DataLoader(self.datasets[split], batch_size=self.batch_size, sampler=sampler,
                          generator=torch.Generator().manual_seed(seed), drop_last=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self, seed: int | None = None) -> DataLoader:
        """Shuffled training batches in an order drawn from ``(seed, epoch)`` (``seed``: a run's seed, else the
        dataset seed; the epoch is set by Lightning through ``sampler.set_epoch``)."""
        return self._loader("train", shuffle=True, seed=seed)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
