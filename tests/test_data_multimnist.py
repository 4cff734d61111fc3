"""IDX reading, the MultiMNIST overlay construction, its datamodule's errors, caching and training order."""

import dataclasses
import gzip
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.config import load_suite
from benchmark.runner import check_methods, create_datamodule, run_suite
from datamodules import DATAMODULES
from datamodules.idx import IDXError, read_idx
from datamodules.multi_mnist import MEAN, STD, MultiMNISTDataModule, overlay, resize_nearest_index
from datamodules.sampling import EpochShuffleSampler

ROOT = Path(__file__).resolve().parent.parent
CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """The IDX bytes of ``array``: magic 00 00 <type> <ndim>, big-endian uint32 dims, big-endian data."""
    header = bytes([0, 0, CODES[array.dtype.type], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_source(root: Path, n_train: int, n_test: int, seed: int, gz: bool) -> dict:
    """A tiny MNIST-format folder; every image is distinct (its index is written in its first pixels)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        out[prefix] = (images, labels)
    return out


@pytest.fixture
def sources(tmp_path, monkeypatch):
    monkeypatch.delenv("MTOBENCH_MNIST", raising=False)
    monkeypatch.delenv("MTOBENCH_FASHION_MNIST", raising=False)
    mnist = write_source(tmp_path / "mnist", 40, 12, 0, gz=True)
    fashion = write_source(tmp_path / "fashion", 40, 12, 1, gz=False)
    return {"mnist": mnist, "fashion": fashion, "tmp": tmp_path}


def make_dm(tmp: Path, variant: str = "multi_mnist", **kw) -> MultiMNISTDataModule:
    params = {"batch_size": 4, "variant": variant, "mnist_root": str(tmp / "mnist"),
              "fashion_root": str(tmp / "fashion"), "data_dir": str(tmp / "data"), "n_val": 8, **kw}
    return MultiMNISTDataModule(**params)


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype is np.uint8:
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / "a.idx", array, gz)
    out = read_idx(path, (None, 3, 5), np.dtype(dtype).name)
    np.testing.assert_array_equal(out, array)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative


def test_read_idx_header_by_hand(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(bytes.fromhex("00000801 00000003") + bytes([7, 0, 9]))
    np.testing.assert_array_equal(read_idx(path, (3,), "uint8"), [7, 0, 9])


@pytest.mark.parametrize(("content", "message"), [
    (bytes.fromhex("01000801 00000001 05"), r"not an IDX file: magic number 01000801"),
    (bytes.fromhex("00000a01 00000001 05"), r"unknown data type code 0x0a"),
    (bytes.fromhex("00000803 0000"), r"header truncated"),
    (bytes.fromhex("00000801 00000003 0102"), r"header says shape \(3,\) of uint8 .* holds 10 bytes"),
    (bytes.fromhex("00000801 00000002 0102 03"), r"holds 11 bytes"),
    (b"", r"magic number \(empty\)"),
])
def test_read_idx_rejects_malformed_files(tmp_path, content, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(IDXError, match=message) as err:
        read_idx(path)
    assert str(err.value).startswith(f"{path}: ")


def test_read_idx_checks_expected_shape_dtype_and_gzip(tmp_path):
    path = write_idx(tmp_path / "img", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(IDXError, match=rf"{path}: shape \(2, 4, 4\) does not match the expected \('any', 28, 28\)"):
        read_idx(path, (None, 28, 28))
    with pytest.raises(IDXError, match=rf"{path}: data type uint8 does not match the expected int32"):
        read_idx(path, dtype="int32")
    gz = tmp_path / "img.gz"
    gz.write_bytes(gzip.compress(path.read_bytes())[:-12])
    with pytest.raises(IDXError, match=rf"{gz}: corrupt gzip stream"):
        read_idx(gz)


# ----------------------------------------------------------------------------- construction


def test_resize_index_matches_pil_nearest():
    canvas = np.random.default_rng(0).integers(0, 256, size=(36, 36), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(canvas).resize((28, 28), Image.Resampling.NEAREST))
    idx = resize_nearest_index()
    np.testing.assert_array_equal(canvas[idx][:, idx], pil)


def test_overlay_places_items_and_takes_the_max_where_they_overlap():
    left, right = np.full((1, 28, 28), 100, np.uint8), np.full((1, 28, 28), 200, np.uint8)
    left[0, 27, 27], right[0, 0, 0] = 250, 7
    canvas = np.zeros((36, 36), np.uint8)
    for r in range(36):
        for c in range(36):
            values = [0]
            if r < 28 and c < 28:
                values.append(int(left[0, r, c]))
            if 6 <= r < 34 and 6 <= c < 34:
                values.append(int(right[0, r - 6, c - 6]))
            canvas[r, c] = max(values)
    expected = np.asarray(Image.fromarray(canvas).resize((28, 28), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(overlay(left, right)[0], expected)
    assert canvas[6, 6] == 100 and canvas[7, 7] == 200 and canvas[27, 27] == 250 and canvas[35, 35] == 0


def _identify(image: np.ndarray, left_pool, right_pool) -> tuple[int, int]:
    """The left item's index is in its first pixel (the canvas's top-left is the left item's alone); the partner
    is found by brute force and must be unique."""
    i = int(image[0, 0])
    assert np.array_equal(left_pool[i, 0, :2], image[0, :2])
    candidates = overlay(np.repeat(left_pool[i:i + 1], len(right_pool), axis=0), right_pool)
    matches = np.flatnonzero((candidates == image).all(axis=(1, 2)))
    assert len(matches) == 1, matches
    return i, int(matches[0])


@pytest.mark.parametrize(("variant", "left", "right"), [("multi_mnist", "mnist", "mnist"),
                                                         ("multi_fashion", "fashion", "fashion"),
                                                         ("multi_fashion_mnist", "mnist", "fashion")])
def test_datamodule_builds_disjoint_splits_from_the_right_sources(sources, variant, left, right):
    dm = make_dm(sources["tmp"], variant, n_train=20, n_test=6)
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [20, 8, 6]
    used = {}
    for split, prefix in (("train", "train"), ("val", "train"), ("test", "t10k")):
        arrays = dm._load_cached(split)
        (li, ll), (ri, rl) = sources[left][prefix], sources[right][prefix]
        pairs = [_identify(img, li, ri) for img in arrays["image"]]
        assert [int(ll[i]) for i, _ in pairs] == arrays["left"].tolist()
        assert [int(rl[j]) for _, j in pairs] == arrays["right"].tolist()
        used[split] = {i for i, _ in pairs} | ({j for _, j in pairs} if left == right else set())
        assert len({i for i, _ in pairs}) == len(pairs)
    assert not used["train"] & used["val"]
    item = dm.datasets["test"][0]
    expected = (torch.from_numpy(dm._load_cached("test")["image"][0]).float() / 255 - MEAN) / STD
    torch.testing.assert_close(item["image"][0], expected)
    assert item["image"].shape == (1, 28, 28) and item["targets"]["left"].dtype == torch.int64
    assert [t.name for t in dm.tasks] == ["left", "right"] and dm.tasks[0].kind == "classification"


def test_construction_is_deterministic_and_cached(sources, monkeypatch):
    a = make_dm(sources["tmp"])
    a.setup()
    b = make_dm(sources["tmp"])
    monkeypatch.setattr(MultiMNISTDataModule, "_build", lambda self: pytest.fail("cache not used"))
    b.setup()
    assert b.cache_dir == a.cache_dir
    torch.testing.assert_close(a.datasets["train"].image, b.datasets["train"].image)
    monkeypatch.undo()
    c = make_dm(sources["tmp"], seed=1)
    c.setup()
    assert c.cache_dir != a.cache_dir and not torch.equal(c.datasets["train"].image, a.datasets["train"].image)
    assert not list((sources["tmp"] / "data").rglob("*.tmp"))
    described = a.describe()
    json.dumps(described)
    assert described["variant"] == "multi_mnist" and described["sizes"] == {"train": 32, "val": 8, "test": 12}


def test_changed_source_file_gives_a_new_cache(sources):
    a = make_dm(sources["tmp"])
    a.setup()
    write_source(sources["tmp"] / "mnist", 40, 12, 5, gz=True)
    assert make_dm(sources["tmp"]).cache_dir != a.cache_dir


def test_corrupt_cache_names_the_file(sources):
    a = make_dm(sources["tmp"])
    a.prepare_data()
    path = a.cache_dir / "val.npz"
    np.savez(path, image=np.zeros((2, 28, 28), np.uint8), left=np.array([0, 12]), right=np.array([0, 1]))
    with pytest.raises(ValueError, match=rf"{path}: cached arrays .* delete the file"):
        make_dm(sources["tmp"]).setup()


# ----------------------------------------------------------------------------- errors


def test_missing_mnist_folder_explains_how_to_get_it(sources):
    dm = MultiMNISTDataModule(batch_size=4, data_dir=str(sources["tmp"] / "data"))
    with pytest.raises(FileNotFoundError, match=r"no MNIST folder given.*yann.lecun.com.*mnist_root.*MTOBENCH_MNIST"):
        dm.setup()


def test_env_var_and_missing_files_are_named(sources, monkeypatch):
    monkeypatch.setenv("MTOBENCH_MNIST", str(sources["tmp"] / "mnist"))
    dm = MultiMNISTDataModule(batch_size=4, data_dir=str(sources["tmp"] / "data"), n_val=8)
    dm.setup()
    assert dm.describe()["files"]["mnist"]["train-images-idx3-ubyte"].endswith("train-images-idx3-ubyte.gz")
    (sources["tmp"] / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    dm = MultiMNISTDataModule(batch_size=4, data_dir=str(sources["tmp"] / "data"), n_val=8)
    with pytest.raises(FileNotFoundError, match=r"mnist folder .*mnist \(from \$MTOBENCH_MNIST\) lacks "
                                                r"t10k-labels-idx1-ubyte\[\.gz\]"):
        dm.setup()


def test_fashion_defaults_to_the_debian_package_path(sources):
    dm = MultiMNISTDataModule(batch_size=4, variant="multi_fashion", data_dir=str(sources["tmp"] / "data"))
    if Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        assert dm.source_files()["fashion"]["train-images-idx3-ubyte"].parent == Path("/usr/share/datasets/"
                                                                                     "fashion-mnist")
        return
    with pytest.raises(FileNotFoundError, match=r"/usr/share/datasets/fashion-mnist \(from the Debian package "
                                                r"dataset-fashion-mnist\) lacks .*make data-fashion.*fashion_root"):
        dm.setup()


def test_bad_labels_and_counts_name_the_file(sources):
    root = sources["tmp"] / "mnist"
    write_idx(root / "train-labels-idx1-ubyte.gz", np.full(40, 10, np.uint8), gz=True)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: label 10 is outside \[0, 10\)"):
        make_dm(sources["tmp"]).setup()
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8), gz=True)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: 39 labels, but .*train-images.* 40 images"):
        make_dm(sources["tmp"]).setup()
    write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((40, 32, 32), np.uint8), gz=True)
    with pytest.raises(IDXError, match=r"train-images-idx3-ubyte.gz: shape \(40, 32, 32\) does not match"):
        make_dm(sources["tmp"]).setup()


@pytest.mark.parametrize(("kw", "message"), [
    ({"variant": "multi_cifar"}, r"variant='multi_cifar' is not one of \['multi_mnist'"),
    ({"n_val": 0}, r"n_val=0 must be an integer >= 1"),
    ({"n_train": 2}, r"batch_size=4 exceeds n_train=2"),
])
def test_bad_params(sources, kw, message):
    with pytest.raises(ValueError, match=message):
        make_dm(sources["tmp"], **kw)


def test_n_val_must_leave_training_items(sources):
    with pytest.raises(ValueError, match=r"n_val=40 leaves no training item of the 40 in .*train-images"):
        make_dm(sources["tmp"], n_val=40).setup()


# ----------------------------------------------------------------------------- training order


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    s = EpochShuffleSampler(50, seed=3)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    assert sorted(first) == list(range(50)) and first != second
    again = EpochShuffleSampler(50, seed=3)
    again.set_epoch(1)
    assert list(again) == second == EpochShuffleSampler(50, 3).order(1)
    assert list(EpochShuffleSampler(50, seed=4)) != first


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch["image"][:, 0, 0, 0].tolist())
        return (self.w * batch["image"].sum()).sum() * 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_sets_the_epoch_so_each_epoch_has_its_own_order(sources):
    dm = make_dm(sources["tmp"])
    dm.setup()
    module = _Recorder()
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, train_dataloaders=dm.train_dataloader(seed=7))
    first_pixels = dm.datasets["train"].image[:, 0, 0, 0]
    for epoch in (0, 1):
        order = EpochShuffleSampler(len(dm.datasets["train"]), 7).order(epoch)[:32]
        assert module.seen[epoch] == first_pixels[order].tolist()


# ----------------------------------------------------------------------------- suites end to end


@pytest.mark.parametrize("config", ["configs/suites/multifashion.yaml", "configs/protocols/mgda_ub_multimnist.yaml"])
def test_configs_run_end_to_end_on_a_fixture(sources, config):
    """Every method of the config builds; the first and the last method run one epoch on the fixture."""
    tmp = sources["tmp"]
    params = {"variant": "multi_mnist" if "mgda" in config else "multi_fashion", "mnist_root": str(tmp / "mnist"),
              "fashion_root": str(tmp / "fashion"), "data_dir": str(tmp / "data"), "n_val": 8, "n_train": 16}
    overrides = ["--suite.dataset.params", json.dumps(params), "--suite.train.epochs", "1",
                 "--suite.train.batch_size", "8", "--suite.seeds", "[0]", "--suite.output_dir", str(tmp / "runs"),
                 "--suite.train.accelerator", "cpu"]
    suite = load_suite(ROOT / config, overrides)
    assert suite.dataset.name == "multi_mnist" and suite.model.name == "lenet" and suite.stl
    dm = create_datamodule(suite)
    dm.setup()
    check_methods(suite, dm.tasks)
    ends = json.dumps([dataclasses.asdict(m) for m in (suite.methods[0], suite.methods[-1])])
    suite = load_suite(ROOT / config, [*overrides, "--suite.methods", ends, "--suite.stl", "false"])
    paths = run_suite(suite)
    assert len(paths) == 2 and all(p.exists() for p in paths)
    record = json.loads(paths[-1].read_text())
    assert record["method"] == suite.methods[-1].name and record["model"]["name"] == "lenet"
    assert set(record["epochs"][0]["test"]) == {"left/acc", "right/acc"}
    assert all(0 <= v <= 100 for v in record["epochs"][0]["test"].values())
    assert DATAMODULES["multi_mnist"] is MultiMNISTDataModule
