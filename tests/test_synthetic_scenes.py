"""Tests of the synthetic-scenes generator and datamodule (docs/data.md §3.13)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from datamodules.scene_render import (
    BOX,
    CEILING,
    CLASS_NAMES,
    CYLINDER,
    FLOOR,
    PICTURE,
    RUG,
    SPHERE,
    WALL,
    camera_frame,
    focal_length,
    mirror_scene,
    render,
    render_quantised,
    render_scene,
    room_planes,
    sample_scene,
)
from datamodules.synthetic_scenes import SyntheticScenesDataModule

H, W = 24, 32
GOLDEN_NUMPY = "2.4.6"
GOLDEN = {
    (0, 0, 0): "6662067cfbd0dac9490fc501b73420597256c657fbb58d07ad66a200f9ec6598",
    (0, 1, 3): "be2fe6b04f5c40d315a6d7631ad6334b3aac247bfd79afabc9e025e5882c946a",
    (7, 2, 11): "08e3933a44492e1294af1e21b6d7fb1b8305648960b6dda564e098c98a795c9a",
}
PLANAR = (FLOOR, WALL, CEILING, RUG, PICTURE, BOX)


def _digest(sample: dict) -> str:
    h = hashlib.sha256()
    for key in ("image", "label", "depth", "normal"):
        h.update(sample[key].tobytes())
    return h.hexdigest()


def _rays(scene, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame pixel-centre rays d_c (H, W, 3) and the matching world directions R d_c."""
    f = focal_length(width)
    u = (np.arange(width) + 0.5 - width / 2) / f
    v = (np.arange(height) + 0.5 - height / 2) / f
    uu, vv = np.meshgrid(u, v)
    d_cam = np.stack([uu, vv, np.ones_like(uu)], axis=-1)
    rot = np.array(camera_frame(scene)).T
    return d_cam, np.einsum("ij,hwj->hwi", rot, d_cam)


def _world_points(scene, depth: np.ndarray) -> np.ndarray:
    _, d_world = _rays(scene, *depth.shape)
    return np.array(scene.camera) + depth[..., None].astype(np.float64) * d_world


def _distance_to_labelled_primitive(scene, label: int, p: np.ndarray) -> np.ndarray:
    """Distance of points p (N, 3) to the nearest primitive of the class ``label``."""
    planes = room_planes(scene)
    if label in (FLOOR, RUG, CEILING):
        n, c = planes[0 if label != CEILING else 1]
        return np.abs(p @ np.array(n) - c)
    if label in (WALL, PICTURE):
        return np.min([np.abs(p @ np.array(n) - c) for n, c in planes[2:]], axis=0)
    dists = []
    for obj in (o for o in scene.objects if o.kind == label):
        x, z, y = p[:, 0] - obj.x, p[:, 2] - obj.z, p[:, 1]
        if obj.kind == SPHERE:
            dists.append(np.abs(np.sqrt(x * x + (y - obj.size[0]) ** 2 + z * z) - obj.size[0]))
        elif obj.kind == BOX:
            c, s = np.cos(obj.yaw), np.sin(obj.yaw)
            local = np.stack([c * x - s * z, y - obj.size[1], s * x + c * z], axis=1)
            dists.append(np.abs((np.abs(local) - np.array(obj.size)).max(axis=1)))
        else:
            r, h = obj.size
            radial = np.sqrt(x * x + z * z)
            side = np.where((y > -1e-6) & (y < h + 1e-6), np.abs(radial - r), np.inf)
            dists.append(np.minimum(side, np.where(radial <= r + 1e-6, np.abs(y - h), np.inf)))
    return np.min(dists, axis=0)


def test_determinism_independent_of_order():
    first = render_scene(0, 0, 5, H, W, 2)
    for i in (9, 3, 0):
        render_scene(0, 0, i, H, W, 2)
    again = render_scene(0, 0, 5, H, W, 2)
    for key in first:
        assert np.array_equal(first[key], again[key]), key
    assert not np.array_equal(first["image"], render_scene(0, 1, 5, H, W, 2)["image"])
    assert not np.array_equal(first["image"], render_scene(1, 0, 5, H, W, 2)["image"])


@pytest.mark.skipif(np.__version__ != GOLDEN_NUMPY, reason=f"golden checksums pinned on NumPy {GOLDEN_NUMPY}")
def test_golden_checksums():
    for (seed, split, index), digest in GOLDEN.items():
        assert _digest(render_quantised((seed, split, index, H, W, 2))) == digest, (seed, split, index)


@pytest.mark.parametrize("supersample", [1, 2])
def test_depth_lies_on_labelled_primitive(supersample):
    for index in range(6):
        scene = sample_scene(3, 0, index)
        out = render(scene, 32, 48, supersample)
        depth, label = out["depth"][0], out["label"]
        points = _world_points(scene, depth)
        valid = depth > 0
        assert valid.mean() > 0.8
        classes = PLANAR if supersample == 2 else range(len(CLASS_NAMES))
        for cls in classes:
            mask = valid & (label == cls)
            if mask.any():
                err = _distance_to_labelled_primitive(scene, cls, points[mask])
                assert np.all(err < 1e-4 * depth[mask]), (index, CLASS_NAMES[cls], err.max())


@pytest.mark.parametrize("supersample", [1, 2])
def test_normals_match_depth_on_planar_regions(supersample):
    checked = 0
    for index in range(6):
        out = render_scene(4, 0, index, 32, 48, supersample)
        depth, normal, label = out["depth"][0], out["normal"].transpose(1, 2, 0), out["label"]
        d_cam, _ = _rays(sample_scene(4, 0, index), 32, 48)
        x = depth[..., None].astype(np.float64) * d_cam
        du, dv = x[:-1, 1:] - x[:-1, :-1], x[1:, :-1] - x[:-1, :-1]
        fd = -np.cross(du, dv)
        fd /= np.linalg.norm(fd, axis=-1, keepdims=True) + 1e-30
        n0 = normal[:-1, :-1]
        same = (np.abs(normal[:-1, 1:] - n0).max(-1) < 1e-6) & (np.abs(normal[1:, :-1] - n0).max(-1) < 1e-6)
        mask = same & (depth[:-1, :-1] > 0) & (depth[:-1, 1:] > 0) & (depth[1:, :-1] > 0)
        lab = label[:-1, :-1]
        mask &= np.isin(lab, PLANAR) & (label[:-1, 1:] == lab) & (label[1:, :-1] == lab)
        angle = np.degrees(np.arccos(np.clip((fd[mask] * n0[mask]).sum(-1), -1, 1)))
        assert angle.size and angle.max() < 1.0, (index, angle.max())
        checked += angle.size
    assert checked > 3000


def test_normals_unit_and_facing_camera():
    for index in range(8):
        scene = sample_scene(5, 0, index)
        out = render(scene, 32, 48, 2)
        n = out["normal"].transpose(1, 2, 0).astype(np.float64)
        valid = out["depth"][0] > 0
        assert np.all(np.abs(np.linalg.norm(n[valid], axis=-1) - 1) < 1e-3)
        d_cam, _ = _rays(scene, 32, 48)
        assert np.all((n[valid] * d_cam[valid]).sum(-1) < 0)


def _emitter_side_runs(depth: np.ndarray, side: float) -> tuple[int, int]:
    """Invalid runs in each row whose occluder (the closer bounding pixel) lies toward the emitter."""
    good = total = 0
    for row in depth:
        edges = np.flatnonzero(np.diff(np.r_[0, (row == 0).astype(np.int8), 0]))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if start > 0 and stop < row.size:
                total += 1
                good += (row[stop] < row[start - 1]) if side > 0 else (row[start - 1] < row[stop])
    return good, total


def test_invalid_pixels_consistent():
    for index in range(8):
        scene = sample_scene(6, 0, index)
        low, high = render(scene, 16, 24, 2), render(scene, 32, 48, 1)
        for out in (low, high):
            assert all(np.isfinite(v).all() for v in out.values())
            assert np.array_equal(out["depth"][0] == 0, np.all(out["normal"] == 0, axis=0))
        assert (high["label"] >= 0).all()
        blocks = high["label"].reshape(16, 2, 24, 2).transpose(0, 2, 1, 3).reshape(16, 24, 4)
        mixed = (blocks != blocks[..., :1]).any(-1)
        assert np.array_equal(low["label"] == -1, mixed)
        assert np.array_equal(low["label"][~mixed], blocks[~mixed][:, 0])
        depth_blocks = high["depth"][0].reshape(16, 2, 24, 2).transpose(0, 2, 1, 3).reshape(16, 24, 4)
        assert np.all((depth_blocks > 0).all(-1)[low["depth"][0] > 0])


def test_emitter_shadow_falls_away_from_emitter():
    for side in (1.0, -1.0):
        good = total = 0
        for index in range(12):
            scene = dataclasses.replace(sample_scene(8, 0, index), emitter_side=side)
            g, t = _emitter_side_runs(render(scene, 32, 48, 1)["depth"][0], side)
            good, total = good + g, total + t
        assert total > 30 and good / total > 0.9, (side, good, total)


@pytest.mark.parametrize("supersample", [1, 2])
def test_flip_equivariance_of_geometry(supersample):
    for index in range(5):
        scene = sample_scene(9, 0, index)
        a, b = render(scene, H, W, supersample), render(mirror_scene(scene), H, W, supersample)
        assert np.array_equal(a["label"], b["label"][:, ::-1])
        assert np.array_equal(a["depth"], b["depth"][..., ::-1])
        flipped = b["normal"][..., ::-1] * np.array([-1, 1, 1], np.float32)[:, None, None]
        assert np.array_equal(a["normal"], flipped)
        assert not np.array_equal(a["label"], a["label"][:, ::-1])


def test_class_coverage_and_summary_statistics():
    counts, present, depths = np.zeros(9), np.zeros(9), []
    n = 100
    for index in range(n):
        out = render_scene(11, 0, index, 32, 48, 2)
        c = np.bincount(out["label"].ravel() + 1, minlength=9)
        counts, present = counts + c, present + (c > 0)
        depths.append(out["depth"][out["depth"] > 0])
    share = dict(zip(("ignore", *CLASS_NAMES), counts / counts.sum(), strict=True))
    bands = {"ignore": (0.01, 0.1), "floor": (0.15, 0.4), "wall": (0.25, 0.5), "ceiling": (0.001, 0.05),
             "rug": (0.04, 0.25), "picture": (0.003, 0.04), "box": (0.03, 0.15), "sphere": (0.02, 0.12),
             "cylinder": (0.03, 0.15)}
    for name, (lo, hi) in bands.items():
        assert lo < share[name] < hi, (name, share[name])
    assert present[1 + FLOOR] == n and present[1 + WALL] == n and present[1 + CYLINDER] > 0.5 * n
    depths = np.concatenate(depths)
    p1, p50, p99 = np.percentile(depths, [1, 50, 99])
    assert 0.7 < p1 < 2.0 and 2.5 < p50 < 4.5 and 6.0 < p99 < 10.0


def _small_dm(tmp_path, **kw) -> SyntheticScenesDataModule:
    args = dict(data_dir=str(tmp_path), height=H, width=W, n_train=12, n_val=4, n_test=4, seed=2,
                supersample=1, batch_size=4, generate_workers=1)
    return SyntheticScenesDataModule(**{**args, **kw})


def test_generation_independent_of_workers_and_cache(tmp_path):
    one, two = _small_dm(tmp_path / "a"), _small_dm(tmp_path / "b", generate_workers=2)
    one.prepare_data()
    two.prepare_data()
    assert one.cache_key == two.cache_key
    for split_id, split in enumerate(("train", "val", "test")):
        a, b = one.load_split(split), two.load_split(split)
        direct = render_quantised((2, split_id, 3, H, W, 1))
        for key in a:
            assert np.array_equal(a[key], b[key]) and np.array_equal(a[key][3], direct[key]), (split, key)
    assert _small_dm(tmp_path, seed=3).cache_key != one.cache_key
    assert _small_dm(tmp_path, n_val=5).cache_key != one.cache_key


def test_cache_regenerated_when_corrupt_or_missing(tmp_path, capsys):
    dm = _small_dm(tmp_path)
    dm.prepare_data()
    reference = {s: dm.load_split(s) for s in ("val", "test")}
    manifest = json.loads((dm.cache_dir / "manifest.json").read_text())
    assert set(manifest["files"]) == {"train.npz", "val.npz", "test.npz"}
    capsys.readouterr()
    dm.prepare_data()
    assert capsys.readouterr().out == ""

    val = dm.cache_dir / "val.npz"
    data = bytearray(val.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 8])
    val.write_bytes(bytes(data))
    (dm.cache_dir / "test.npz").unlink()
    dm.prepare_data()
    out = capsys.readouterr().out
    assert "val.npz" in out and "checksum" in out and "test.npz" in out and "missing" in out
    assert "train.npz" not in out
    for split, arrays in reference.items():
        for key, value in dm.load_split(split).items():
            assert np.array_equal(value, arrays[key]), (split, key)
    dm.prepare_data()
    assert capsys.readouterr().out == ""
    assert not list(dm.cache_dir.glob("*.tmp"))


def test_datamodule_batches_and_order(tmp_path):
    dm = _small_dm(tmp_path)
    assert [(t.name, t.kind) for t in dm.tasks] == [("semseg", "segmentation"), ("depth", "depth"),
                                                   ("normal", "normals")]
    assert dm.tasks[0].num_classes == 8 and dm.tasks[0].ignore_index == -1
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    batch = batches[0]
    assert batch["image"].shape == (4, 3, H, W) and batch["image"].dtype == torch.float32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    t = batch["targets"]
    assert t["semseg"].shape == (4, H, W) and t["semseg"].dtype == torch.int64
    assert t["depth"].shape == (4, 1, H, W) and t["depth"].dtype == torch.float32
    assert t["normal"].shape == (4, 3, H, W) and t["normal"].dtype == torch.float32
    valid = t["depth"][:, 0] > 0
    assert torch.allclose(t["normal"].norm(dim=1)[valid], torch.ones(()), atol=1e-5)
    assert torch.equal(next(iter(dm.train_dataloader()))["image"], batch["image"])
    assert not torch.equal(batch["image"], dm.datasets["train"].image[:4])
    direct = render_scene(2, 1, 0, H, W, 1)
    val = next(iter(dm.val_dataloader()))
    assert torch.allclose(val["targets"]["depth"][0], torch.from_numpy(direct["depth"]), atol=6e-5)
    assert torch.equal(val["targets"]["semseg"][0], torch.from_numpy(direct["label"]))
    assert len(list(dm.test_dataloader())) == 1
    info = dm.describe()
    assert info["height"] == H and info["sizes"] == {"train": 12, "val": 4, "test": 4}


@pytest.mark.parametrize("kwargs, name", [({"height": 0}, "height"), ({"n_train": -1}, "n_train"),
                                          ({"supersample": 9}, "supersample"), ({"seed": 1.5}, "seed"),
                                          ({"batch_size": 64}, "batch_size"),
                                          ({"generate_workers": 0}, "generate_workers")])
def test_invalid_arguments_rejected(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        _small_dm(tmp_path, **kwargs)
