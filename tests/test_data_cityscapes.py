"""Cityscapes (MTAN release) datamodule: label-folder variants, inverse depth, splits, augmentation, errors, and
the Cityscapes protocol configs end to end on fixtures (tests/fixtures_mtan.py)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.config import load_suite
from benchmark.records import read_record
from benchmark.runner import check_methods, create_datamodule, run_suite
from benchmark.tasks import validate_batch
from datamodules import DATAMODULES, CityscapesDataModule
from datamodules.mtan_folder import draw_scale_crop_flip
from datamodules.npy_folder import DataError, DataMissingError
from tests.fixtures_mtan import write_cityscapes

SMALL = {"height": 16, "width": 32, "check_sizes": False, "val_size": 2}
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "protocols"


@pytest.fixture
def small(tmp_path) -> Path:
    return write_cityscapes(tmp_path / "cityscapes2", n_train=6, n_val=3, height=16, width=32,
                            label_folders=("label_2", "label_7", "label_19"))


def small_dm(root: Path, **params) -> CityscapesDataModule:
    return CityscapesDataModule(root=str(root), **{**SMALL, **params})


def test_registered():
    assert DATAMODULES["cityscapes"] is CityscapesDataModule


def test_true_resolution_batches_match_the_files(tmp_path):
    root = write_cityscapes(tmp_path / "cs", n_train=3, n_val=2)
    dm = CityscapesDataModule(root=str(root), val_size=1, check_sizes=False, batch_size=2)
    dm.setup()
    assert [t.name for t in dm.tasks] == ["semseg", "depth"] and dm.tasks[0].num_classes == 7
    batch = next(iter(dm.test_dataloader()))
    validate_batch(dm.tasks, batch)
    assert batch["image"].shape == (2, 3, 128, 256)
    for i in range(2):
        label = np.load(root / "val" / "label_7" / f"{i}.npy")
        depth = np.load(root / "val" / "depth" / f"{i}.npy")
        assert torch.equal(batch["targets"]["semseg"][i], torch.from_numpy(label.astype(np.int64)))
        assert torch.equal(batch["targets"]["depth"][i, 0], torch.from_numpy(depth[..., 0].astype(np.float32)))
    inverse = batch["targets"]["depth"]
    assert (inverse == 0).any() and 0 < inverse[inverse > 0].min() and inverse.max() <= 0.49
    validate_batch(dm.tasks, next(iter(dm.train_dataloader(seed=1))))


@pytest.mark.parametrize("classes", [2, 7, 19])
def test_class_variants_read_their_folder(small, classes):
    dm = small_dm(small, classes=classes)
    dm.setup()
    assert dm.tasks[0].num_classes == classes and dm.describe()["folders"]["semseg"] == f"label_{classes}"
    batch = next(iter(dm.test_dataloader()))
    expected = np.load(small / "val" / f"label_{classes}" / "0.npy").astype(np.int64)
    assert torch.equal(batch["targets"]["semseg"][0], torch.from_numpy(expected))


def test_libmtl_label_folder_is_accepted_for_7_classes(small):
    for split in ("train", "val"):
        shutil.rmtree(small / split / "label_2")
        (small / split / "label_7").rename(small / split / "label")
    dm = small_dm(small)
    dm.setup()
    assert dm.describe()["folders"]["semseg"] == "label"
    with pytest.raises(DataError) as info:
        small_dm(small, classes=2).setup()
    assert "label_2" in str(info.value) and str(small / "train") in str(info.value)


def test_missing_label_folder_names_the_expected_ones(small):
    for name in ("label_2", "label_7", "label_19"):
        shutil.rmtree(small / "train" / name)
    with pytest.raises(DataError) as info:
        small_dm(small).setup()
    message = str(info.value)
    assert "['label_7', 'label']" in message and str(small / "train") in message and "'label'" in message


def test_split_carving_and_augmentation_without_normals(small):
    dm = small_dm(small, val_size=2)
    dm.setup()
    assert sorted(dm.split_ids["val"] + dm.split_ids["train"]) == list(range(6))
    ds = dm.dataset("train", augment_seed=0)
    file_id = ds.ids[0]
    flips = {e: draw_scale_crop_flip(0, e, file_id, 16, 32) for e in range(20)}
    epoch = next(e for e, d in flips.items() if d.flip and d.scale == 1.0)
    sample, plain = ds[(epoch, 0)], ds[0]
    assert set(sample["targets"]) == {"semseg", "depth"}
    assert torch.equal(sample["targets"]["depth"], plain["targets"]["depth"].flip(-1))
    assert torch.equal(sample["targets"]["semseg"], plain["targets"]["semseg"].flip(-1))
    epoch = next(e for e, d in flips.items() if d.scale == 1.5)
    depth = ds[(epoch, 0)]["targets"]["depth"]
    values = set((ds.load(0)["depth"] / 1.5).float().flatten().tolist())  # divided as loaded (float64), then cast
    assert set(depth.flatten().tolist()) <= values


def test_missing_root_says_what_to_download(monkeypatch):
    monkeypatch.delenv("MTOBENCH_CITYSCAPES", raising=False)
    with pytest.raises(DataMissingError) as info:
        CityscapesDataModule().setup()
    message = str(info.value)
    for part in ("dropbox.com/sh/gaw6vh6qusoyms6", "MTOBENCH_CITYSCAPES", "dataset.params.root", "label_7"):
        assert part in message


@pytest.mark.parametrize("field, folder, array, expect", [
    ("depth", "depth", np.ones((16, 32)), "shape (16, 32)"),
    ("depth", "depth", -np.ones((16, 32, 1)), "values in [-1, -1]"),
    ("label", "label_7", np.full((16, 32), 7.0), "label 7 outside [0, 7)"),
    ("image", "image", np.zeros((16, 32, 3), dtype=np.float16).astype(np.complex64), "dtype complex64"),
])
def test_bad_files_name_the_file_and_field(small, field, folder, array, expect):
    path = small / "train" / folder / "0.npy"
    np.save(path, array)
    with pytest.raises(DataError) as info:
        small_dm(small).setup()
    message = str(info.value)
    assert str(path) in message and f"'{field}'" in message and expect in message


def test_mismatched_indices_and_sizes(small):
    (small / "val" / "depth" / "1.npy").unlink()
    with pytest.raises(DataError, match=r"depth.*1\.npy is missing"):
        small_dm(small).setup()
    np.save(small / "val" / "depth" / "1.npy", np.zeros((16, 32, 1)))
    with pytest.raises(DataError, match="has 6 samples, the MTAN release has 2975"):
        small_dm(small, check_sizes=True).setup()


def test_bad_classes():
    with pytest.raises(ValueError, match="classes=8"):
        CityscapesDataModule(classes=8)


@pytest.mark.parametrize("config, methods", [
    ("nashmtl_cityscapes", "[{name: ew, label: LS}, {name: nash_mtl, label: Nash-MTL}]"),
    ("imtl_cityscapes", "[{name: imtl_h, label: IMTL-H}, {name: mgda, label: MGDA}]"),
])
def test_protocol_config_runs_on_a_small_fixture(tmp_path, config, methods):
    """The protocol's SegNet-MTAN, made narrow, on a 32x64 fixture."""
    small = write_cityscapes(tmp_path / "cityscapes", n_train=6, n_val=3, height=32, width=64)
    out = tmp_path / "runs"
    overrides = ["--suite.model.params={width: 4}", "--suite.seeds=[0]",
                 "--suite.train.epochs=1", "--suite.train.batch_size=2", "--suite.train.accelerator=cpu",
                 f"--suite.dataset.params.root={small}", "--suite.dataset.params.height=32",
                 "--suite.dataset.params.width=64", "--suite.dataset.params.check_sizes=false",
                 "--suite.dataset.params.num_workers=0", f"--suite.output_dir={out}",
                 f"--suite.leaderboard={out}/leaderboard.md"]
    suite = load_suite(CONFIGS / f"{config}.yaml", overrides)
    assert suite.dataset.name == "cityscapes" and suite.dataset.params["classes"] == 7 and suite.reference_table
    dm = create_datamodule(suite)
    dm.setup()
    check_methods(suite, dm.tasks)
    suite = load_suite(CONFIGS / f"{config}.yaml", [*overrides, f"--suite.methods={methods}", "--suite.stl=true"])
    records = [read_record(p) for p in run_suite(suite)]
    assert len(records) == 4 and all(r["status"] == "finished" for r in records)
    assert {r["kind"] for r in records} == {"mtl", "stl"}
    mtl = next(r for r in records if r["kind"] == "mtl")
    assert mtl["dataset_info"]["val_is_test"] is True and mtl["timing"]["steps"] == 3
    assert set(mtl["epochs"][0]["test"]) >= {"semseg/miou", "semseg/pix_acc", "depth/abs_err", "depth/rel_err"}
