"""NYUv2 (MTAN release) datamodule: layout, values, splits, the seeded order and augmentation, error messages,
and the NYUv2 protocol configs end to end on fixtures (tests/fixtures_mtan.py)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from benchmark.config import load_suite
from benchmark.records import read_record
from benchmark.runner import check_methods, create_datamodule, run_suite
from benchmark.tasks import validate_batch
from datamodules import DATAMODULES, NYUv2DataModule
from datamodules.mtan_folder import SCALES, ScaleCropFlip, draw_scale_crop_flip, scale_crop_flip
from datamodules.npy_folder import DataError, DataMissingError
from tests.fixtures_mtan import write_nyuv2

SMALL = {"height": 16, "width": 24, "check_sizes": False}
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "protocols"


@pytest.fixture(scope="module")
def full_res(tmp_path_factory) -> Path:
    return write_nyuv2(tmp_path_factory.mktemp("nyuv2_full"), n_train=4, n_val=3)


@pytest.fixture
def small(tmp_path) -> Path:
    return write_nyuv2(tmp_path / "nyuv2", n_train=8, n_val=3, height=16, width=24)


def small_dm(root: Path, **params) -> NYUv2DataModule:
    return NYUv2DataModule(root=str(root), **{"val_size": 2, **SMALL, **params})


def test_registered():
    assert DATAMODULES["nyuv2"] is NYUv2DataModule


def test_true_resolution_batches_match_the_files(full_res):
    dm = NYUv2DataModule(root=str(full_res), val_size=1, check_sizes=False, batch_size=2)
    dm.setup("fit")
    assert [t.name for t in dm.tasks] == ["semseg", "depth", "normal"] and dm.tasks[0].num_classes == 13
    batch = next(iter(dm.test_dataloader()))
    validate_batch(dm.tasks, batch)
    assert batch["image"].shape == (2, 3, 288, 384) and batch["image"].dtype == torch.float32
    for i in range(2):
        files = {f: np.load(full_res / "val" / f / f"{i}.npy") for f in ("image", "label", "depth", "normal")}
        assert torch.equal(batch["image"][i], torch.from_numpy(files["image"].astype(np.float32)).permute(2, 0, 1))
        assert torch.equal(batch["targets"]["semseg"][i], torch.from_numpy(files["label"].astype(np.int64)))
        depth, normal = (torch.from_numpy(files[k].astype(np.float32)).permute(2, 0, 1) for k in ("depth", "normal"))
        assert torch.equal(batch["targets"]["depth"][i], depth)
        assert torch.equal(batch["targets"]["normal"][i], normal)
    assert (batch["targets"]["semseg"] == -1).any() and (batch["targets"]["depth"] == 0).any()
    train = next(iter(dm.train_dataloader(seed=0)))
    validate_batch(dm.tasks, train)
    assert train["targets"]["normal"].shape == (2, 3, 288, 384)


def test_nested_root_and_env_var(small, monkeypatch):
    dm = NYUv2DataModule(root=str(small.parent), **SMALL, val_size=2)
    dm.setup()
    assert dm.root == small
    monkeypatch.setenv("MTOBENCH_NYUV2", str(small))
    dm = NYUv2DataModule(**SMALL, val_size=2)
    dm.setup()
    assert dm.describe()["root"] == str(small.resolve())


def test_validation_split_is_carved_from_train_independent_of_the_run_seed(small):
    dm = small_dm(small, val_size=3)
    dm.setup()
    info = dm.describe()
    val, train = dm.split_ids["val"], dm.split_ids["train"]
    assert len(val) == 3 and sorted(val + train) == list(range(8)) and info["val_ids"] == val
    assert info["sizes"] == {"train": 5, "val": 3, "test": 3} and info["val_is_test"] is False
    again = small_dm(small, val_size=3)
    again.setup()
    assert again.split_ids == dm.split_ids
    other = small_dm(small, val_size=3, split_seed=1)
    other.setup()
    assert other.split_ids["val"] != val
    first_val = next(iter(dm.val_dataloader()))
    expected = np.load(small / "train" / "image" / f"{val[0]}.npy").astype(np.float32)
    assert torch.equal(first_val["image"][0], torch.from_numpy(expected).permute(2, 0, 1))


def test_val_size_zero_means_val_is_the_test_split(small):
    dm = small_dm(small, val_size=0)
    dm.setup()
    info = dm.describe()
    assert info["val_is_test"] is True and info["val_ids"] == [] and info["sizes"]["train"] == 8
    val, test = next(iter(dm.val_dataloader())), next(iter(dm.test_dataloader()))
    assert torch.equal(val["image"], test["image"])


def keys_of(loader, epoch: int) -> list:
    _set_sampler_epoch(loader, epoch)
    return list(loader.sampler)


def test_train_order_is_a_function_of_seed_and_epoch(small):
    dm = small_dm(small, augment=False)
    loader = dm.train_dataloader(seed=3)
    order = keys_of(loader, 5)
    assert sorted(p for _, p in order) == list(range(6)) and {e for e, _ in order} == {5}
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 (perturb the legacy global RNG on purpose)
    assert keys_of(small_dm(small, augment=False).train_dataloader(seed=3), 5) == order
    positions = [p for _, p in order]
    assert [p for _, p in keys_of(loader, 6)] != positions
    assert [p for _, p in keys_of(dm.train_dataloader(seed=4), 5)] != positions


def test_augmentation_is_a_pure_function_of_seed_epoch_and_file(small):
    ds = small_dm(small).dataset("train", augment_seed=7)
    plain = small_dm(small).dataset("train")
    torch.manual_seed(0)
    a = ds[(2, 1)]
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    b = small_dm(small).dataset("train", augment_seed=7)[(2, 1)]
    for key in ("semseg", "depth", "normal"):
        assert torch.equal(a["targets"][key], b["targets"][key])
    assert torch.equal(a["image"], b["image"])
    draws = {draw_scale_crop_flip(7, epoch, ds.ids[1], 16, 24) for epoch in range(40)}
    assert len(draws) > 1
    assert any(not torch.equal(ds[(e, 1)]["image"], plain[1]["image"]) for e in range(10))
    assert torch.equal(plain[(3, 1)]["image"], plain[1]["image"])


def test_draws_cover_the_scales_and_flips_within_bounds():
    draws = [draw_scale_crop_flip(0, epoch, 5, 288, 384) for epoch in range(300)]
    assert {d.scale for d in draws} == set(SCALES) and {d.flip for d in draws} == {True, False}
    for d in draws:
        h, w = int(288 / d.scale), int(384 / d.scale)
        assert 0 <= d.top <= 288 - h and 0 <= d.left <= 384 - w
    assert draws == [draw_scale_crop_flip(0, epoch, 5, 288, 384) for epoch in range(300)]


KINDS = {"image": "image", "semseg": "segmentation", "depth": "depth", "normal": "normals"}


def hand_sample(h: int = 6, w: int = 6) -> dict[str, torch.Tensor]:
    label = torch.arange(h * w).reshape(h, w) % 5 - 1
    depth = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, h, w)
    depth[0, 0, 1] = 0
    normal = torch.stack([torch.full((h, w), 0.6), torch.full((h, w), 0.0), torch.full((h, w), 0.8)])
    normal[:, 2, 3] = 0
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    return {"image": image, "semseg": label, "depth": depth, "normal": normal}


def test_flip_mirrors_every_map_and_negates_the_normal_x_channel():
    s = hand_sample()
    out = scale_crop_flip(s, KINDS, ScaleCropFlip(1.0, 0, 0, True))
    assert torch.equal(out["image"], s["image"].flip(-1))
    assert torch.equal(out["semseg"], s["semseg"].flip(-1)) and out["semseg"].dtype == torch.int64
    assert torch.equal(out["depth"], s["depth"].flip(-1))
    assert torch.equal(out["normal"][0], -s["normal"][0].flip(-1))
    assert torch.equal(out["normal"][1:], s["normal"][1:].flip(-1))
    assert torch.equal(out["normal"][:, 2, 2], torch.zeros(3))


def test_scale_crop_resizes_nearest_and_divides_depth_by_the_scale():
    s = hand_sample()
    out = scale_crop_flip(s, KINDS, ScaleCropFlip(1.5, 1, 2, False))
    rows = cols = torch.tensor([0, 0, 1, 2, 2, 3])  # nearest: floor(i * 4 / 6) for a 4-pixel crop resized to 6
    crop = {k: v[..., 1:5, 2:6] for k, v in s.items()}
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in s.items()}
    assert torch.equal(out["semseg"], crop["semseg"][rows][:, cols])
    assert (out["semseg"] == -1).any() and out["semseg"].dtype == torch.int64
    torch.testing.assert_close(out["depth"], crop["depth"][:, rows][:, :, cols] / 1.5)
    corners = (..., [0, 0, -1, -1], [0, -1, 0, -1])
    torch.testing.assert_close(out["image"][corners], crop["image"][corners])
    torch.testing.assert_close(out["normal"][corners], crop["normal"][corners])
    zero = s["depth"].clone()
    zero[:, 1:5, 2:6] = 0
    assert (scale_crop_flip({"depth": zero}, KINDS, ScaleCropFlip(1.5, 1, 2, True))["depth"] == 0).all()


def test_lightning_sets_the_epoch_on_the_sampler(small):
    loader = small_dm(small).train_dataloader(seed=0)
    _set_sampler_epoch(loader, 4)
    batch = next(iter(loader))
    assert loader.sampler.epoch == 4 and batch["image"].shape == (2, 3, 16, 24)


# --------------------------------------------------------------------------------------------- errors


def error_of(root: Path, **params) -> str:
    with pytest.raises((DataError, DataMissingError, ValueError)) as info:
        small_dm(root, **params).setup()
    return str(info.value)


def test_missing_root_says_what_to_download(monkeypatch, tmp_path):
    monkeypatch.delenv("MTOBENCH_NYUV2", raising=False)
    with pytest.raises(DataMissingError) as info:
        NYUv2DataModule(**SMALL).setup()
    message = str(info.value)
    for part in ("dropbox.com/sh/86nssgwm6hm3vkb", "MTOBENCH_NYUV2", "dataset.params.root",
                 "train/{image,label,depth,normal}"):
        assert part in message
    message = error_of(tmp_path / "nowhere")
    assert "does not exist" in message and str(tmp_path / "nowhere") in message and "dropbox" in message
    (tmp_path / "empty").mkdir()
    assert "no 'train/' subfolder" in error_of(tmp_path / "empty")


def test_empty_field_folder(small):
    for f in (small / "train" / "depth").iterdir():
        f.unlink()
    message = error_of(small)
    assert "'depth'" in message and str(small / "train" / "depth") in message and "no .npy files" in message


def test_missing_split_folder(small):
    import shutil
    shutil.rmtree(small / "val")
    assert str(small / "val") in error_of(small)


def test_corrupt_npy(small):
    path = small / "train" / "normal" / "5.npy"
    path.write_bytes(path.read_bytes()[:200])
    message = error_of(small)
    assert str(path) in message and "'normal'" in message and "corrupt" in message
    path.write_bytes(b"not a numpy file at all")
    message = error_of(small)
    assert str(path) in message and "'normal'" in message


@pytest.mark.parametrize("field, array, expect", [
    ("depth", np.ones((16, 24)), "shape (16, 24)"),
    ("image", np.zeros((16, 24, 3), dtype=np.uint8), "dtype uint8"),
    ("image", np.full((16, 24, 3), 200.0), "values in [200, 200]"),
    ("normal", np.full((16, 24, 3), np.nan), "non-finite"),
    ("label", np.full((16, 24), 13.0), "label 13 outside [0, 13)"),
    ("label", np.full((16, 24), 2.5), "non-integer"),
    ("depth", -np.ones((16, 24, 1)), "values in [-1, -1]"),
])
def test_bad_first_sample_is_caught_at_setup(small, field, array, expect):
    path = small / "train" / field / "0.npy"
    np.save(path, array)
    message = error_of(small)
    assert str(path) in message and f"'{field}'" in message and expect in message


def test_bad_values_in_a_later_file_are_caught_when_loaded(small):
    path = small / "val" / "label" / "2.npy"
    np.save(path, np.full((16, 24), 20.0))
    dm = small_dm(small)
    dm.setup()
    with pytest.raises(DataError) as info:
        list(dm.test_dataloader())
    assert str(path) in str(info.value) and "'label'" in str(info.value) and "20" in str(info.value)


def test_mismatched_file_indices(small):
    (small / "train" / "normal" / "3.npy").unlink()
    message = error_of(small)
    assert str(small / "train" / "normal") in message and "3.npy is missing" in message and "'normal'" in message
    np.save(small / "train" / "normal" / "3.npy", np.zeros((16, 24, 3)))
    (small / "train" / "normal" / "3.npy").rename(small / "train" / "normal" / "30.npy")
    assert "30.npy has no match in image/" in error_of(small)
    (small / "train" / "normal" / "30.npy").rename(small / "train" / "normal" / "x3.npy")
    assert "x3.npy is not named <integer>.npy" in error_of(small)


def test_split_sizes_are_checked_against_the_release(small):
    message = error_of(small, check_sizes=True)
    assert "has 8 samples, the MTAN release has 795" in message and str(small / "train" / "image") in message


def test_bad_params():
    with pytest.raises(ValueError, match="val_size=-1"):
        NYUv2DataModule(val_size=-1)
    with pytest.raises(ValueError, match="augment='yes'"):
        NYUv2DataModule(augment="yes")


def test_val_size_must_leave_training_files(small):
    assert "val_size=8 must be smaller than the 8 files" in error_of(small, val_size=8)


# --------------------------------------------------------------------------------------------- protocols


def tiny_overrides(root: Path, out: Path, height: int = 16, width: int = 24) -> list[str]:
    return ["--suite.model.name=segnet", "--suite.model.params={width: 4, levels: 2}", "--suite.seeds=[0]",
            "--suite.train.epochs=1", "--suite.train.accelerator=cpu", f"--suite.dataset.params.root={root}",
            f"--suite.dataset.params.height={height}", f"--suite.dataset.params.width={width}",
            "--suite.dataset.params.check_sizes=false", "--suite.dataset.params.num_workers=0",
            f"--suite.output_dir={out}", f"--suite.leaderboard={out}/leaderboard.md"]


@pytest.mark.parametrize("config, methods", [
    ("nashmtl_nyuv2", "[{name: ew, label: LS}, {name: nash_mtl, label: Nash-MTL}]"),
    ("libmtl_nyuv2_deeplab", "[{name: ew, label: EW}, {name: imtl_h, label: IMTL}]"),
    ("imtl_nyuv2", "[{name: imtl_l, label: IMTL-L}, {name: imtl_g, label: IMTL-G}]"),
])
def test_protocol_config_runs_on_a_small_fixture(small, tmp_path, config, methods):
    overrides = tiny_overrides(small, tmp_path / "runs")
    suite = load_suite(CONFIGS / f"{config}.yaml", overrides)
    assert suite.dataset.name == "nyuv2" and suite.train.lr == 1e-4 and suite.train.epochs == 1
    assert suite.reference_table and len(suite.seeds) == 1
    dm = create_datamodule(suite)
    dm.setup()
    check_methods(suite, dm.tasks)
    suite = load_suite(CONFIGS / f"{config}.yaml", [*overrides, f"--suite.methods={methods}", "--suite.stl=false"])
    records = [read_record(p) for p in run_suite(suite)]
    assert len(records) == 2 and all(r["status"] == "finished" for r in records)
    info = records[0]["dataset_info"]
    assert info["name"] == "nyuv2" and info["val_is_test"] is True and info["sizes"]["train"] == 8
    assert set(records[0]["epochs"][0]["test"]) >= {"semseg/miou", "depth/abs_err", "normal/normal_mean"}


@pytest.mark.slow
def test_done_criterion_nashmtl_protocol_on_the_true_resolution_folder(full_res, tmp_path):
    """A user with the MTAN NYUv2 folder points the Nash-MTL suite at it and runs (models made tiny)."""
    overrides = tiny_overrides(full_res, tmp_path / "runs", 288, 384)
    overrides += ["--suite.methods=[{name: nash_mtl, label: Nash-MTL}]", "--suite.stl=false"]
    suite = load_suite(CONFIGS / "nashmtl_nyuv2.yaml", overrides)
    (record,) = [read_record(p) for p in run_suite(suite)]
    assert record["status"] == "finished" and record["dataset_info"]["height"] == 288
    assert record["timing"]["steps"] == 2 and len(record["epochs"]) == 1


def test_worker_processes_see_the_same_epochs_and_augmentations(small):
    """The epoch travels inside each sampler key, so persistent workers need no shared state."""
    serial, parallel = small_dm(small).train_dataloader(seed=2), small_dm(small, num_workers=2).train_dataloader(seed=2)
    for epoch in (0, 3):
        for loader in (serial, parallel):
            _set_sampler_epoch(loader, epoch)
        for a, b in zip(serial, parallel, strict=True):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["targets"]["depth"], b["targets"]["depth"])
