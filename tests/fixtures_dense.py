"""Tiny NYUD-v2 (Vandenhende layout) and PASCAL-Context (ASTMT ``PASCAL_MT``) folders with the real file types,
shapes, dtypes, sentinels, folder and split-file names of docs/data.md §4.3-4.4, filled with random values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

PERSON = 15
PART_NAMES = ("head", "hair", "torso", "neck", "luarm", "llarm", "rhand", "ruleg", "rlleg", "lfoot")


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    n = rng.normal(size=(*shape, 3))
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def _write_split(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def write_nyud(base: Path, n_train: int = 4, n_val: int = 3, h: int = 12, w: int = 16, nested: bool = True,
               seed: int = 0) -> Path:
    """``base/NYUD_MT/...`` (or ``base/...`` when not ``nested``); returns ``base``."""
    root = base / "NYUD_MT" if nested else base
    for folder in ("images", "segmentation", "depth", "normals", "edge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"{k:04d}" for k in range(1, n_train + n_val + 1)]
    for i in ids:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg",
                                                                              quality=95)
        seg = rng.integers(0, 41, (h, w)).astype(np.uint8)
        seg[0, 0], seg[0, 1] = 0, 40
        Image.fromarray(seg).save(root / "segmentation" / f"{i}.png")
        depth = rng.uniform(0.5, 10.0, (h, w)).astype(np.float32)
        depth[0, :3] = 0.0
        np.save(root / "depth" / f"{i}.npy", depth)
        normal = _unit(rng, (h, w)) * rng.uniform(0.97, 1.0, (h, w, 1)).astype(np.float32)
        normal[1, :2] = 0.0
        np.save(root / "normals" / f"{i}.npy", normal)
        np.save(root / "edge" / f"{i}.npy", (rng.random((h, w)) > 0.8).astype(np.float32))
    _write_split(root / "gt_sets" / "train.txt", ids[:n_train])
    _write_split(root / "gt_sets" / "val.txt", ids[n_train:])
    return base


def _parts_struct(names: list[str], masks: list[np.ndarray]) -> np.ndarray:
    parts = np.zeros((1, len(names)), dtype=[("part_name", "O"), ("mask", "O")])
    for k, (name, mask) in enumerate(zip(names, masks, strict=True)):
        parts[0, k] = (name, mask)
    return parts


def write_parts_mat(path: Path, objects: list[tuple[int, np.ndarray, list[str], list[np.ndarray]]]) -> None:
    """PASCAL-Part ``anno`` struct: ``anno[0][0][1][0]`` = objects (class, class_ind, mask, parts)."""
    objs = np.zeros((1, len(objects)), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
    for k, (cls, mask, names, masks) in enumerate(objects):
        parts = _parts_struct(names, masks) if names else np.zeros((0, 0))
        objs[0, k] = ("person" if cls == PERSON else "other", np.array([[cls]], dtype=np.uint8), mask, parts)
    scipy.io.savemat(path, {"anno": {"imname": path.stem, "objects": objs}})


def write_pascal(base: Path, n_train: int = 4, n_val: int = 3, h: int = 14, w: int = 18, nested: bool = True,
                 seed: int = 0, parts_images: tuple[int, ...] = (1,)) -> Path:
    """``base/PASCAL_MT/...``; the images ``parts_images`` of each split have a person with parts, image 2 a person
    without parts, the others none. Semseg comes from VOC12 for even ids and from pascal-context for odd ones."""
    root = base / "PASCAL_MT" if nested else base
    for folder in ("JPEGImages", "semseg/VOC12", "semseg/pascal-context", "human_parts", "normals_distill",
                   "sal_distill", "pascal-context/trainval"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"2008_{k:06d}" for k in range(1, n_train + n_val + 1)]
    for n, i in enumerate(ids):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        seg = rng.integers(0, 21, (h, w)).astype(np.uint8)
        seg[0, :2] = 255
        Image.fromarray(seg).save(root / "semseg" / ("VOC12" if n % 2 == 0 else "pascal-context") / f"{i}.png")
        label_map = np.zeros((h, w), dtype=np.uint16)
        label_map[:, w // 2:] = 3
        label_map[h // 2:, : w // 3] = 7
        scipy.io.savemat(root / "pascal-context" / "trainval" / f"{i}.mat", {"LabelMap": label_map})
        normal = np.clip(np.round((_unit(rng, (h, w)) + 1.0) * 127.5), 0, 255).astype(np.uint8)
        Image.fromarray(normal).save(root / "normals_distill" / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / "sal_distill" / f"{i}.png")
        objects = [(3, np.zeros((h, w), dtype=np.uint8), [], [])]
        k = n if n < n_train else n - n_train
        if k == 2 or k in parts_images:
            body = np.zeros((h, w), dtype=np.uint8)
            body[2:10, 3:9] = 1
            names = list(PART_NAMES) if k in parts_images else []
            masks = []
            for j, _ in enumerate(names):
                m = np.zeros((h, w), dtype=np.uint8)
                m[2 + j % 8, 3:9] = 1
                masks.append(m)
            objects.append((PERSON, body, names, masks))
        write_parts_mat(root / "human_parts" / f"{i}.mat", objects)
    _write_split(root / "ImageSets" / "Context" / "train.txt", ids[:n_train])
    _write_split(root / "ImageSets" / "Context" / "val.txt", ids[n_train:])
    return base


def smoke_overrides(root: Path, out: Path) -> list[str]:
    """Tiny overrides that run a protocol suite for one epoch on a fixture (SegNet stands in for HRNet-18)."""
    return ["--suite.model.name=segnet", "--suite.model.params={width: 4, levels: 2}", "--suite.seeds=[0]",
            "--suite.train.epochs=1", "--suite.train.batch_size=2", "--suite.train.accelerator=cpu",
            "--suite.methods=[{name: ew, label: GD}, {name: cso, label: CSO, model: {task_bn: true}}]",
            f"--suite.dataset.params={{root: {root}, height: 16, width: 16, strict_sizes: false, num_workers: 0}}",
            f"--suite.output_dir={out}"]


def check_cso_protocol(path: str, table_id: str, protocol: str, dataset: dict) -> None:
    """The CSO protocol suite states P3 / P5's optimiser and data settings and labels its methods as the rows of
    its reference table (a shared check of tests/test_data_nyud.py and tests/test_data_pascal.py)."""
    from benchmark.config import load_suite
    from benchmark.methods import available
    from benchmark.scoring import BUNDLED_REFERENCE_TABLES, load_reference_tables

    suite = load_suite(path)
    t = suite.train
    assert (t.optimizer, t.lr, t.weight_decay, t.lr_schedule, t.batch_size, t.epochs) == ("adam", 1e-4, 1e-4, "poly",
                                                                                         8, 100)
    assert suite.model.name == "hrnet18" and suite.model.params["pretrained_path"] is None
    assert {k: suite.dataset.params[k] for k in dataset} == dataset and suite.dataset.params["root"] is None
    assert (suite.selection, suite.seeds, suite.stl, suite.reference_table) == ("last", [0, 1, 2], True, table_id)
    assert {m.name for m in suite.methods} <= set(available())
    assert [m.model for m in suite.methods if m.name == "cso"] == [{"task_bn": True}]
    assert all(not m.model for m in suite.methods if m.name != "cso")
    table = load_reference_tables(BUNDLED_REFERENCE_TABLES)[table_id]
    assert table["protocol"] == protocol
    assert {m.key for m in suite.methods} == {row["method"] for row in table["rows"]}
