"""PASCAL-Context (ASTMT PASCAL_MT) loader on tiny real-format fixtures, edge thinning and human-parts parsing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
import torch
from PIL import Image

from benchmark import tasks as T
from benchmark.config import load_suite
from benchmark.report.markdown import build_leaderboard
from benchmark.runner import run_suite
from datamodules import DATAMODULES
from datamodules.pascal_context import (
    ENV,
    PART_IDS,
    PascalContextDataModule,
    edges_from_labelmap,
    human_parts_map,
    thin,
)
from tests.fixtures_dense import PART_NAMES, PERSON, check_cso_protocol, smoke_overrides, write_parts_mat, write_pascal

H, W = 14, 18


def make(root, **kw) -> PascalContextDataModule:
    params = {"height": H, "width": W, "batch_size": 2, "strict_sizes": False, **kw}
    dm = PascalContextDataModule(root=str(root), **params)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pascal(tmp_path_factory.mktemp("pascal"))


def _test_items(dm):
    return [dm._dataset("test")[k] for k in range(len(dm.ids["test"]))]


def test_registered_tasks_and_describe(data):
    assert DATAMODULES["pascal_context"] is PascalContextDataModule
    dm = make(data)
    assert [(t.name, t.kind, t.num_classes, t.auxiliary) for t in dm.tasks] == [
        ("semseg", "segmentation", 21, False), ("parts", "human_parts", 7, False),
        ("saliency", "saliency", None, False), ("normal", "normals", None, False), ("edge", "edges", None, True)]
    assert all(t.ignore_index == 255 for t in dm.tasks if t.kind != "normals")
    info = dm.describe()
    assert info["normals_valid_classes"].startswith("all pixels") and info["sizes"]["train"] == 4


def test_eval_samples_equal_files(data):
    dm = make(data)
    root = data / "PASCAL_MT"
    items = _test_items(dm)
    for k, (item, sample) in enumerate(zip(dm.ids["test"], items, strict=True)):
        t = sample["targets"]
        voc = root / "semseg" / "VOC12" / f"{item}.png"
        seg_file = voc if voc.is_file() else root / "semseg" / "pascal-context" / f"{item}.png"
        assert np.array_equal(t["semseg"].numpy(), np.asarray(Image.open(seg_file)))
        sal = np.asarray(Image.open(root / "sal_distill" / f"{item}.png"))
        assert np.array_equal(t["saliency"][0].numpy(), (sal >= 128).astype(np.float32))
        raw = np.asarray(Image.open(root / "normals_distill" / f"{item}.png")).astype(np.float64) * 2 / 255 - 1
        want = raw / np.linalg.norm(raw, axis=2, keepdims=True)
        assert np.allclose(t["normal"].permute(1, 2, 0).numpy(), want, atol=1e-6)
        label_map = scipy.io.loadmat(root / "pascal-context" / "trainval" / f"{item}.mat")["LabelMap"]
        assert np.array_equal(t["edge"][0].numpy(), edges_from_labelmap(label_map).astype(np.float32))
        parts = t["parts"].numpy()
        if k == 1:
            assert set(np.unique(parts)) <= {0, *PART_IDS.values()} and (parts > 0).any()
        else:
            assert (parts == 255).all(), k  # no person, or a person without parts
    batch = next(iter(dm.test_dataloader()))
    T.validate_batch(dm.tasks, batch)


def test_person_parts_hand_case(tmp_path):
    """A person with 'head' over rows 0-1 and 'llarm' on row 1 (drawn later, wins), a 'neck' on row 2; a cow."""
    path = tmp_path / "x.mat"
    masks = [np.zeros((4, 3), np.uint8) for _ in range(3)]
    masks[0][0:2] = 1
    masks[1][1] = 1
    masks[2][2, 0] = 1
    write_parts_mat(path, [(10, np.ones((4, 3), np.uint8), [], []),
                           (PERSON, np.ones((4, 3), np.uint8), ["head", "llarm", "neck"], masks)])
    assert human_parts_map(path, (4, 3)).tolist() == [[1, 1, 1], [4, 4, 4], [2, 0, 0], [0, 0, 0]]
    write_parts_mat(path, [(PERSON, np.ones((4, 3), np.uint8), [], [])])
    assert (human_parts_map(path, (4, 3)) == 255).all()
    write_parts_mat(path, [(PERSON, np.ones((4, 3), np.uint8), ["tail"], [masks[0]])])
    with pytest.raises(ValueError, match=r"x.mat: field 'human_parts': part name 'tail' is not one of"):
        human_parts_map(path, (4, 3))
    write_parts_mat(path, [(PERSON, np.ones((4, 3), np.uint8), ["head"], [np.ones((5, 3), np.uint8)])])
    with pytest.raises(ValueError, match=r"x.mat: field \"human_parts mask of 'head'\": shape \(5, 3\)"):
        human_parts_map(path, (4, 3))
    scipy.io.savemat(path, {"anno": np.zeros((1, 1))})
    with pytest.raises(ValueError, match=r"x.mat: field 'human_parts': 'anno' is not the PASCAL-Part struct"):
        human_parts_map(path, (4, 3))


def test_part_table_covers_the_24_person_parts_in_6_groups():
    assert len(PART_IDS) == 24 and sorted(set(PART_IDS.values())) == [1, 2, 3, 4, 5, 6]
    assert set(PART_NAMES) <= set(PART_IDS)


def test_normals_valid_classes_mask_other_pixels(data):
    dm = make(data, normals_valid_classes=[3])
    item, sample = dm.ids["test"][0], _test_items(dm)[0]
    label_map = scipy.io.loadmat(data / "PASCAL_MT" / "pascal-context" / "trainval" / f"{item}.mat")["LabelMap"]
    valid = (sample["targets"]["normal"] != 0).any(dim=0).numpy()
    assert np.array_equal(valid, label_map == 3)
    assert dm.describe()["normals_valid_classes"] == [3]


# ----------------------------------------------------------------------------- thinning and edges


def test_thin_matches_the_skimage_docstring_example():
    """The example in the docstring of ``skimage.morphology.thin`` (same Guo-Hall algorithm)."""
    square = np.zeros((7, 7), dtype=bool)
    square[1:-1, 2:-2] = True
    square[0, 1] = True
    want = np.zeros((7, 7), dtype=int)
    want[0, 1] = want[1, 2] = 1
    want[2:5, 3] = 1
    assert np.array_equal(thin(square).astype(int), want)


def test_thin_properties():
    rng = np.random.default_rng(0)
    blob = scipy.ndimage.binary_dilation(rng.random((20, 24)) > 0.93, iterations=2)
    out = thin(blob)
    assert not (out & ~blob).any()
    assert np.array_equal(thin(out), out)
    assert 0 < out.sum() < blob.sum() / 3
    eight, four = np.ones((3, 3)), [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert scipy.ndimage.label(out, eight)[1] == scipy.ndimage.label(blob, eight)[1]
    holes = [scipy.ndimage.label(~np.pad(m, 1), four)[1] for m in (out, blob)]  # outside the image is background
    assert holes[0] == holes[1]
    line = np.zeros((5, 9), bool)
    line[0, 1:8] = True  # one-pixel-wide curves stay as they are
    line[np.arange(1, 5), np.arange(1, 5) + 2] = True
    assert np.array_equal(thin(line), line)
    block = np.ones((3, 3), bool)
    assert thin(np.pad(block, 1)).sum() == 1


def test_edges_use_a_mirrored_4_neighbour_laplacian():
    rng = np.random.default_rng(1)
    label_map = rng.integers(0, 3, (9, 11)) * (rng.random((9, 11)) > 0.5)
    p = np.pad(label_map.astype(float), 1, mode="reflect")  # numpy 'reflect' = OpenCV BORDER_REFLECT_101
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * p[1:-1, 1:-1]
    assert np.array_equal(edges_from_labelmap(label_map), thin(lap != 0))
    half = np.zeros((6, 8), int)
    half[:, 4:] = 3
    assert edges_from_labelmap(half).sum(axis=1).tolist() == [0, 1, 1, 1, 1, 1]


# ----------------------------------------------------------------------------- determinism and errors


def test_train_batches_are_reproducible(data):
    a, b = make(data).train_dataloader(seed=5), make(data).train_dataloader(seed=5)
    for loader in (a, b):
        loader.sampler.set_epoch(2)
    for x, y in zip(a, b, strict=True):
        T.validate_batch(make(data).tasks, x)
        assert torch.equal(x["image"], y["image"])
        assert all(torch.equal(x["targets"][k], y["targets"][k]) for k in x["targets"])


def test_missing_root_names_archive_layout_key_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        make(tmp_path / "none")
    for part in ("PASCAL_MT.tgz", "dataset.params.root", ENV, "ImageSets/Context/{train,val}.txt",
                 "human_parts/<id>.mat"):
        assert part in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither .*ImageSets nor .*PASCAL_MT/ImageSets exists"):
        make(tmp_path / "empty")


def test_split_size_is_checked(data):
    with pytest.raises(ValueError, match=r"Context/train.txt lists 4 ids, expected 4998"):
        make(data, strict_sizes=True)


@pytest.fixture
def broken(tmp_path):
    base = write_pascal(tmp_path)
    root = base / "PASCAL_MT"
    return base, root, (root / "ImageSets" / "Context" / "train.txt").read_text().split()[0]


def test_missing_parts_file(broken):
    base, root, item = broken
    (root / "human_parts" / f"{item}.mat").unlink()
    with pytest.raises(FileNotFoundError, match=rf"pascal_context: parts file .*{item}.mat does not exist"):
        make(base)
    assert [t.name for t in make(base, tasks=["semseg", "saliency"]).tasks] == ["semseg", "saliency"]


def test_corrupt_and_out_of_range_semseg(broken):
    base, root, item = broken
    path = root / "semseg" / "VOC12" / f"{item}.png"
    Image.fromarray(np.full((H, W), 21, np.uint8)).save(path)
    with pytest.raises(ValueError, match=rf"{item}.png: field 'semseg': value 21 is outside \[0, 20\] or 255"):
        make(base)
    path.write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=rf"{item}.png: field 'semseg': cannot decode"):
        make(base)


def test_wrong_shapes_and_dtypes(broken):
    base, root, item = broken
    sal = root / "sal_distill" / f"{item}.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(sal)
    with pytest.raises(ValueError, match=rf"{item}.png: field 'saliency': expected a uint8 image \(H, W\)"):
        make(base)
    Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(sal)
    with pytest.raises(ValueError, match=rf"{item}.png: field 'saliency': shape \(14, 20\) does not match"):
        make(base)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(sal)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "normals_distill" / f"{item}.png")
    with pytest.raises(ValueError, match=rf"{item}.png: field 'normal': expected a uint8 image \(H, W, 3\)"):
        make(base)


def test_labelmap_errors(broken):
    base, root, item = broken
    path = root / "pascal-context" / "trainval" / f"{item}.mat"
    scipy.io.savemat(path, {"Labels": np.zeros((H, W), np.uint16)})
    with pytest.raises(ValueError, match=rf"{item}.mat: field 'LabelMap': the .mat file has no variable 'LabelMap'"):
        make(base)
    scipy.io.savemat(path, {"LabelMap": np.zeros((H, W), np.float32)})
    with pytest.raises(ValueError, match=rf"{item}.mat: field 'LabelMap': dtype float32 is not an integer dtype"):
        make(base)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=rf"{item}.mat: field 'LabelMap': cannot read the .mat file"):
        make(base)


def test_cso_pascal_protocol_runs_one_epoch_on_the_fixture(data, tmp_path):
    """Without STL runs (the NYUD smoke run covers them) to keep it short."""
    suite = load_suite("configs/protocols/cso_pascal.yaml", [*smoke_overrides(data, tmp_path), "--suite.stl=false"])
    records = [json.loads(p.read_text()) for p in run_suite(suite)]
    assert sorted(r["method"] for r in records) == ["cso", "ew"]
    cso = next(r for r in records if r["method"] == "cso")
    assert cso["model"]["overrides"] == {"task_bn": True}
    test = cso["epochs"][-1]["test"]
    for key in ("semseg/miou", "parts/miou", "saliency/maxf", "saliency/miou", "normal/normal_mean", "edge/loss"):
        assert math.isfinite(test[key]), key
    board = build_leaderboard(records)
    assert "edge/loss ↓ (aux)" in board and "No STL run for task(s) normal, parts, saliency, semseg:" in board


def test_cso_pascal_protocol_settings():
    check_cso_protocol(
        "configs/protocols/cso_pascal.yaml", "cso_t2_pascal", "pascal_context_mtinet_hrnet18",
        {"height": 512, "width": 512, "augment": True, "val_size": 0})
