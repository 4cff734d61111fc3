"""NYUD-v2 (Vandenhende layout) loader on tiny real-format fixtures, its broken variants and the seeded warp."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import tasks as T
from benchmark.config import load_suite
from benchmark.report.markdown import build_leaderboard
from benchmark.runner import run_suite
from datamodules import DATAMODULES
from datamodules.dense_io import IMAGENET_MEAN, IMAGENET_STD, affine, warp
from datamodules.nyud import ENV, NYUDDataModule
from datamodules.sampling import EpochShuffleSampler
from tests.fixtures_dense import check_cso_protocol, smoke_overrides, write_nyud

H, W = 12, 16


def make(root, **kw) -> NYUDDataModule:
    params = {"height": H, "width": W, "batch_size": 2, "strict_sizes": False, **kw}
    dm = NYUDDataModule(root=str(root), **params)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_nyud(tmp_path_factory.mktemp("nyud"))


def _unnormalise(image: torch.Tensor) -> torch.Tensor:
    return image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


def test_registered_tasks_and_describe(data):
    assert DATAMODULES["nyud"] is NYUDDataModule
    dm = make(data)
    assert [(t.name, t.kind, t.auxiliary) for t in dm.tasks] == [
        ("semseg", "segmentation", False), ("depth", "depth", False), ("normal", "normals", False),
        ("edge", "edges", True)]
    assert dm.tasks[0].num_classes == 40 and dm.tasks[0].ignore_index == 255 and dm.tasks[3].pos_weight == 0.95
    info = dm.describe()
    assert info["sizes"] == {"train": 4, "val": 3, "test": 3} and info["source_height_width"] == [H, W]
    assert [t.name for t in make(data, tasks=["depth", "semseg"]).tasks] == ["semseg", "depth"]
    with pytest.raises(ValueError, match=r"nyud: tasks=\['sal'\]: each must be one of"):
        NYUDDataModule(root=str(data), tasks=["sal"])


def test_eval_sample_equals_files(data):
    """At the native size evaluation is the identity: labels x -> x - 1 with 0 -> 255, depth, unit normals."""
    dm = make(data)
    batch = next(iter(dm.test_dataloader()))
    T.validate_batch(dm.tasks, batch)
    item = "0005"
    root = data / "NYUD_MT"
    seg = np.asarray(Image.open(root / "segmentation" / f"{item}.png")).astype(np.int64)
    want = np.where(seg == 0, 255, seg - 1)
    assert np.array_equal(batch["targets"]["semseg"][0].numpy(), want)
    assert batch["targets"]["semseg"][0, 0, 0] == 255 and batch["targets"]["semseg"][0, 0, 1] == 39
    depth = np.load(root / "depth" / f"{item}.npy")
    assert np.array_equal(batch["targets"]["depth"][0, 0].numpy(), depth)
    normal = np.load(root / "normals" / f"{item}.npy")
    length = np.linalg.norm(normal, axis=2, keepdims=True)
    want_n = np.where(length > 0, normal / np.maximum(length, 1e-12), 0).transpose(2, 0, 1)
    assert np.allclose(batch["targets"]["normal"][0].numpy(), want_n, atol=1e-6)
    assert np.array_equal(batch["targets"]["edge"][0, 0].numpy(), np.load(root / "edge" / f"{item}.npy"))
    image = np.asarray(Image.open(root / "images" / f"{item}.jpg")).astype(np.float32) / 255
    assert np.allclose(_unnormalise(batch["image"][0]).permute(1, 2, 0).numpy(), image, atol=1e-5)


def test_resize_to_protocol_resolution_keeps_label_values(data):
    dm = make(data, height=24, width=40)
    batch = next(iter(dm.test_dataloader()))
    T.validate_batch(dm.tasks, batch)
    assert batch["image"].shape == (2, 3, 24, 40)
    src = np.load(data / "NYUD_MT" / "depth" / "0005.npy")
    assert set(batch["targets"]["depth"][0].unique().tolist()) <= set(src.ravel().tolist())


def _batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _equal(a, b) -> bool:
    return all(torch.equal(x["image"], y["image"]) and all(torch.equal(x["targets"][k], y["targets"][k])
                                                            for k in x["targets"]) for x, y in zip(a, b, strict=True))


def test_train_order_and_augmentation_are_functions_of_seed_epoch_index(data):
    dm = make(data)
    first, again = dm.train_dataloader(seed=3), make(data).train_dataloader(seed=3)
    e1 = _batches(first, 1)
    assert _equal(_batches(again, 1), e1)  # a resumed run, straight at epoch 1
    assert _equal(_batches(first, 0), _batches(again, 0))
    assert not _equal(_batches(first, 0), e1)
    assert not _equal(_batches(dm.train_dataloader(seed=4), 1), e1)
    for batch in e1:
        T.validate_batch(dm.tasks, batch)


def test_epoch_sampler_is_a_permutation_keyed_by_epoch():
    s = EpochShuffleSampler(10, seed=1, keyed=True)
    s.set_epoch(2)
    keys = list(s)
    assert sorted(i for _, i in keys) == list(range(10)) and {e for e, _ in keys} == {2}
    s.set_epoch(3)
    assert [i for _, i in s] != [i for _, i in keys]


def test_warp_flip_mirrors_and_negates_normal_x():
    """A flip mirrors every map and negates the normals' x; normals come back as n / (|n| + float32 eps)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    normal = rng.normal(size=(4, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 5, (4, 6))
    targets = {"n": (normal, "normals", 0), "s": (labels, "segmentation", 255)}
    img, out = warp(image, targets, affine(flip=True, aspect=1.5), (4, 6), flip=True)
    assert torch.allclose(img, torch.tensor(image[:, ::-1].copy()).permute(2, 0, 1).float() / 255, atol=1e-5)
    want = normal[:, ::-1].transpose(2, 0, 1).astype(np.float64)
    want[0] *= -1
    want /= np.sqrt((want ** 2).sum(axis=0, keepdims=True)) + np.finfo(np.float32).eps
    assert torch.allclose(out["n"], torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=1e-7)
    assert torch.equal(out["s"], torch.tensor(labels[:, ::-1].copy()))


def test_warp_outside_the_image_is_invalid():
    """Zooming out by 2 leaves a border outside the input: labels there are ignore, depth 0."""
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    targets = {"s": (np.ones((8, 8), dtype=np.int64), "segmentation", 255),
               "d": (np.full((8, 8), 2.0, dtype=np.float32), "depth", 0),
               "e": (np.ones((8, 8), dtype=np.float32), "edges", 255)}
    _, out = warp(image, targets, affine(scale=0.5), (8, 8), flip=False)
    assert out["s"][0, 0] == 255 and out["s"][4, 4] == 1
    assert out["d"][0, 0, 0] == 0 and out["d"][0, 4, 4] == 2.0
    assert out["e"][0, 0, 0] == 255 and out["e"][0, 4, 4] == 1


def test_affine_crop_of_a_scaled_image():
    """Scale 2 about the input's top-left quadrant centre shows that quadrant, pixel for pixel doubled."""
    image = np.arange(16, dtype=np.int64).reshape(4, 4)
    _, out = warp(np.zeros((4, 4, 3), np.uint8), {"s": (image, "segmentation", 255)},
                  affine(scale=2.0, shift=(-0.5, -0.5)), (4, 4), flip=False)
    assert out["s"].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [4, 4, 5, 5], [4, 4, 5, 5]]
    assert math.isclose(float(affine(scale=2.0, angle_deg=90, aspect=1.0)[0, 1]), 0.5, abs_tol=1e-6)


# ----------------------------------------------------------------------------- errors


def test_missing_root_names_archive_layout_key_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        make(tmp_path / "nowhere")
    msg = str(err.value)
    for part in ("does not exist", "14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw", "dataset.params.root", ENV,
                 "NYUD_MT/gt_sets/{train,val}.txt", "normals/<id>.npy"):
        assert part in msg
    with pytest.raises(FileNotFoundError, match=rf"no root given .*\${ENV} is empty"):
        NYUDDataModule().setup()
    with pytest.raises(FileNotFoundError, match=r"neither .*gt_sets nor .*NYUD_MT/gt_sets exists"):
        make(tmp_path)


def test_env_variable_and_unnested_root(tmp_path, monkeypatch):
    write_nyud(tmp_path / "flat", nested=False)
    monkeypatch.setenv(ENV, str(tmp_path / "flat"))
    dm = NYUDDataModule(height=H, width=W, batch_size=2, strict_sizes=False)
    dm.setup()
    assert dm.root == tmp_path / "flat"


def test_split_size_is_checked(data):
    with pytest.raises(ValueError, match=r"gt_sets/train.txt lists 4 ids, expected 795"):
        make(data, strict_sizes=True)


@pytest.fixture
def broken(tmp_path):
    return write_nyud(tmp_path), tmp_path / "NYUD_MT"


def test_empty_split_file(broken):
    base, root = broken
    (root / "gt_sets" / "val.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"val.txt lists no ids"):
        make(base)


def test_missing_file_is_named(broken):
    base, root = broken
    (root / "depth" / "0002.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"nyud: depth file .*depth/0002.npy does not exist"):
        make(base)


def _first_train_id(root) -> str:
    return (root / "gt_sets" / "train.txt").read_text().split()[0]


def test_corrupt_image(broken):
    base, root = broken
    (root / "images" / f"{_first_train_id(root)}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"0001.jpg: field 'image': cannot decode"):
        make(base)


def test_depth_wrong_shape_and_dtype(broken):
    base, root = broken
    path = root / "depth" / "0001.npy"
    np.save(path, np.ones((H, W + 1), np.float32))
    with pytest.raises(ValueError, match=r"0001.npy: field 'depth': shape \(12, 17\) does not match .*\(12, 16\)"):
        make(base)
    np.save(path, np.ones((H, W), np.int32))
    with pytest.raises(ValueError, match=r"0001.npy: field 'depth': dtype int32 is not a float dtype"):
        make(base)
    np.save(path, -np.ones((H, W), np.float32))
    with pytest.raises(ValueError, match=r"field 'depth': value -1.0 is outside \[0, inf\)"):
        make(base)


def test_labels_out_of_range(broken):
    base, root = broken
    Image.fromarray(np.full((H, W), 41, np.uint8)).save(root / "segmentation" / "0001.png")
    with pytest.raises(ValueError, match=r"0001.png: field 'semseg': value 41 is outside \[0, 40\]"):
        make(base)


def test_nan_normals_and_bad_edges(broken):
    base, root = broken
    normal = np.load(root / "normals" / "0001.npy")
    normal[3, 3, 0] = np.nan
    np.save(root / "normals" / "0001.npy", normal)
    with pytest.raises(ValueError, match=r"0001.npy: field 'normal': value nan is outside the finite numbers"):
        make(base)
    np.save(root / "normals" / "0001.npy", np.zeros((H, W, 3), np.float32))
    np.save(root / "edge" / "0001.npy", np.full((H, W), 2.0, np.float32))
    with pytest.raises(ValueError, match=r"0001.npy: field 'edge': value 2.0 is outside \{0, 1\}"):
        make(base)


def test_bad_params():
    with pytest.raises(ValueError, match=r"nyud: height=4 must be an integer >= 8"):
        NYUDDataModule(height=4)


def test_cso_nyud_protocol_runs_one_epoch_on_the_fixture(data, tmp_path):
    suite = load_suite("configs/protocols/cso_nyud.yaml", smoke_overrides(data, tmp_path))
    assert suite.reference_table == "cso_t1_nyud"
    records = [json.loads(p.read_text()) for p in run_suite(suite)]
    assert sorted(r["method"] for r in records) == ["cso", "ew", "stl-depth", "stl-normal", "stl-semseg"]
    gd = next(r for r in records if r["method"] == "ew")
    assert [t["name"] for t in gd["tasks"] if t["auxiliary"]] == ["edge"]
    test = gd["epochs"][-1]["test"]
    assert len(gd["epochs"]) == 1 and "edge/loss" in test and all(math.isfinite(v) for v in test.values())
    board = build_leaderboard(records)
    assert "edge/loss ↓ (aux)" in board and "No STL run" not in board


def test_val_size_holds_out_training_images(data):
    full, dm = make(data), make(data, val_size=1)
    assert len(dm.ids["val"]) == 1 and set(dm.ids["val"]) | set(dm.ids["train"]) == set(full.ids["train"])
    assert dm.ids["test"] == full.ids["test"] and "held out of train" in dm.describe()["val"]
    with pytest.raises(ValueError, match=r"val_size=4 leaves no training image"):
        make(data, val_size=4)
    with pytest.raises(ValueError, match=r"batch_size=4 exceeds the 3 training images"):
        make(data, val_size=1, batch_size=4)


def test_true_resolution_sample_with_default_size(tmp_path):
    """The 480 x 640 release at the protocol's default 480 x 640: evaluation leaves every target untouched."""
    base = write_nyud(tmp_path, n_train=1, n_val=1, h=480, w=640)
    dm = NYUDDataModule(root=str(base), batch_size=1, strict_sizes=False)
    dm.setup()
    sample = dm._dataset("test")[0]
    depth = np.load(base / "NYUD_MT" / "depth" / "0002.npy")
    assert sample["image"].shape == (3, 480, 640)
    assert np.array_equal(sample["targets"]["depth"][0].numpy(), depth)
    train = dm._dataset("train", seed=0)[(0, 0)]
    assert train["targets"]["semseg"].shape == (480, 640)


def test_cso_nyud_protocol_settings():
    check_cso_protocol(
        "configs/protocols/cso_nyud.yaml", "cso_t1_nyud", "nyud_mtinet_hrnet18",
        {"height": 480, "width": 640, "augment": True, "val_size": 0})
