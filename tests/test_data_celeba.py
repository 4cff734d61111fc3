"""The CelebA datamodule on fixtures in the official file formats, its errors, and the CelebA protocols end to end."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from benchmark.config import load_suite
from benchmark.runner import check_methods, create_datamodule, run_suite
from datamodules import DATAMODULES
from datamodules.celeba import MGDA_UB_MEAN, CelebADataModule, mgda_ub_image
from datamodules.sampling import EpochShuffleSampler

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
         "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
         "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
         "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
         "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()
PARTITION = [0] * 8 + [1] * 3 + [2] * 4


def write_celeba(root: Path, seed: int = 0, layout: str = "flat") -> np.ndarray:
    """15 images of 178x218 in the official formats; returns the written N x 40 matrix of -1/1 values."""
    rng = np.random.default_rng(seed)
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    n = len(PARTITION)
    values = rng.choice([-1, 1], size=(n, 40))
    files = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    for f in files:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(root / "img_align_celeba" / f)
    rows = [f + " " + " ".join(f"{v:2d}" for v in row) for f, row in zip(files, values)]
    attr = [f"{n}", " ".join(NAMES) + " ", *rows]
    part = [f"{f} {p}" for f, p in zip(files, PARTITION)]
    attr_dir, part_dir = (root / "Anno", root / "Eval") if layout == "official" else (root, root)
    attr_dir.mkdir(exist_ok=True)
    part_dir.mkdir(exist_ok=True)
    (attr_dir / "list_attr_celeba.txt").write_text("\n".join(attr) + "\n")
    (part_dir / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    return values


@pytest.fixture
def celeba(tmp_path, monkeypatch):
    monkeypatch.delenv("MTOBENCH_CELEBA", raising=False)
    values = write_celeba(tmp_path / "celeba")
    return tmp_path / "celeba", values


def test_tasks_splits_and_labels_follow_the_files(celeba):
    root, values = celeba
    dm = CelebADataModule(batch_size=4, root=str(root))
    assert [t.name for t in dm.tasks] == NAMES and {t.kind for t in dm.tasks} == {"binary"}
    dm.setup()
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 8, "val": 3, "test": 4}
    item = dm.datasets["val"][1]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert [float(item["targets"][n]) for n in NAMES] == [float(v == 1) for v in values[9]]
    expected = transforms.ToTensor()(transforms.Resize((64, 64))(Image.open(root / "img_align_celeba/000010.jpg")))
    torch.testing.assert_close(item["image"], expected, atol=1e-6, rtol=0)
    assert json.dumps(dm.describe()) and dm.describe()["sizes"] == {"train": 8, "val": 3, "test": 4}
    assert DATAMODULES["celeba"] is CelebADataModule


def test_classification_kind_subset_limits_and_official_layout(tmp_path, monkeypatch):
    values = write_celeba(tmp_path / "c", layout="official")
    monkeypatch.setenv("MTOBENCH_CELEBA", str(tmp_path / "c"))
    dm = CelebADataModule(batch_size=2, kind="classification", attributes=["Smiling", "Male"], n_train=5,
                          image_size=16)
    assert [(t.name, t.kind, t.num_classes) for t in dm.tasks] == [("Smiling", "classification", 2),
                                                                   ("Male", "classification", 2)]
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["targets"]["Male"].dtype == torch.int64
    assert batch["targets"]["Smiling"].tolist() == [int(v == 1) for v in values[11:13, NAMES.index("Smiling")]]
    assert len(dm.datasets["train"]) == 5 and dm.describe()["files"]["list_attr_celeba.txt"].endswith(
        "Anno/list_attr_celeba.txt")


def test_training_order_is_a_function_of_seed_and_epoch(celeba):
    dm = CelebADataModule(batch_size=4, root=str(celeba[0]), image_size=8)
    loader = dm.train_dataloader(seed=5)
    assert isinstance(loader.sampler, EpochShuffleSampler) and loader.drop_last
    loader.sampler.set_epoch(3)
    assert list(loader.sampler) == EpochShuffleSampler(8, 5).order(3)


def test_missing_root_explains_how_to_get_the_data(celeba):
    with pytest.raises(FileNotFoundError, match=r"no CelebA folder given.*img_align_celeba.*mmlab.ie.cuhk.edu.hk.*"
                                                r"dataset.params.root.*MTOBENCH_CELEBA"):
        CelebADataModule(batch_size=4)
    (celeba[0] / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match=rf"folder {celeba[0]} \(from dataset.params.root\) lacks "
                                                r"list_eval_partition.txt"):
        CelebADataModule(batch_size=4, root=str(celeba[0]))


def _edit(path: Path, line: int, new: str | None) -> None:
    lines = path.read_text().splitlines()
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(("line", "new", "message"), [
    (1, "16", r"list_attr_celeba.txt, line 1: the count says 16 images, but 15 rows follow"),
    (1, "many", r"list_attr_celeba.txt, line 1: expected the image count, got 'many'"),
    (2, " ".join(NAMES[:39]), r"list_attr_celeba.txt, line 2: expected 40 distinct attribute names, got 39"),
    (5, "000003.jpg " + " ".join(["1"] * 39), r"list_attr_celeba.txt, line 5: expected a file name and 40 values, "
                                              r"got 40 fields"),
    (6, "000004.jpg " + " ".join(["1"] * 39 + ["0"]), r"list_attr_celeba.txt, line 6: attribute value '0' is not"),
    (7, "000005.png " + " ".join(["1"] * 40), r"list_attr_celeba.txt, line 7: file name '000005.png' does not end"),
])
def test_broken_attribute_file_names_file_and_line(celeba, line, new, message):
    _edit(celeba[0] / "list_attr_celeba.txt", line, new)
    with pytest.raises(ValueError, match=message):
        CelebADataModule(batch_size=4, root=str(celeba[0]))


@pytest.mark.parametrize(("line", "new", "message"), [
    (3, "000003.jpg 3", r"list_eval_partition.txt, line 3: expected '<file> <0\|1\|2>', got '000003.jpg 3'"),
    (4, "000004.jpg", r"list_eval_partition.txt, line 4: expected '<file> <0\|1\|2>'"),
    (5, "000001.jpg 0", r"list_eval_partition.txt, line 5: file 000001.jpg is listed twice"),
    (2, None, r"list different images \(1 only in the attributes, 0 only in the partition\): 000002.jpg is in "),
])
def test_broken_partition_file_names_file_and_line(celeba, line, new, message):
    _edit(celeba[0] / "list_eval_partition.txt", line, new)
    with pytest.raises(ValueError, match=message):
        CelebADataModule(batch_size=4, root=str(celeba[0]))


def test_missing_and_corrupt_images_are_named(celeba):
    root = celeba[0]
    (root / "img_align_celeba" / "000010.jpg").unlink()
    dm = CelebADataModule(batch_size=4, root=str(root))
    with pytest.raises(FileNotFoundError, match=r"1 val images listed in .*list_attr_celeba.txt are missing from "
                                                r".*img_align_celeba, e.g. 000010.jpg"):
        dm.setup()
    (root / "img_align_celeba" / "000010.jpg").write_bytes(b"not a jpeg")
    dm = CelebADataModule(batch_size=4, root=str(root))
    dm.setup()
    with pytest.raises(ValueError, match=r"000010.jpg: cannot decode the image"):
        dm.datasets["val"][1]


@pytest.mark.parametrize(("kw", "message"), [
    ({"kind": "multilabel"}, r"kind='multilabel' is not one of \('binary', 'classification'\)"),
    ({"attributes": ["Smiling", "Happy"]}, r"attributes \['Happy'\] are not in .*list_attr_celeba.txt"),
    ({"attributes": []}, r"attributes=\[\] must be a non-empty list"),
    ({"image_size": 4}, r"image_size=4 must be an integer >= 8"),
])
def test_bad_params(celeba, kw, message):
    with pytest.raises(ValueError, match=message):
        CelebADataModule(batch_size=4, root=str(celeba[0]), **kw)


def test_batch_larger_than_the_training_split(celeba):
    with pytest.raises(ValueError, match=r"batch_size=9 exceeds the 8 training images"):
        CelebADataModule(batch_size=9, root=str(celeba[0])).setup()


@pytest.mark.parametrize("config", ["configs/protocols/famo_celeba.yaml", "configs/protocols/mgda_ub_celeba.yaml"])
def test_protocols_run_end_to_end_on_a_fixture(celeba, tmp_path, config):
    """Every method builds on the full 40 tasks; the first and last method run one epoch on 3 attributes."""
    suite = load_suite(ROOT / config)
    params = {**suite.dataset.params, "root": str(celeba[0]), "image_size": 8, "num_workers": 0}
    overrides = ["--suite.dataset.params", json.dumps(params), "--suite.train.epochs", "1",
                 "--suite.train.batch_size", "4", "--suite.seeds", "[0]", "--suite.output_dir", str(tmp_path / "runs"),
                 "--suite.train.accelerator", "cpu"]
    if "famo" in config:
        overrides += ["--suite.model.params", json.dumps({"width": 4})]
    else:  # MGDA-UB's 4x4 pooling needs a 4 x 4 feature map: 32 x 32 images
        params["image_size"] = 32
        overrides[1] = json.dumps(params)
        overrides += ["--suite.model.params", json.dumps({**suite.model.params, "input_size": 32})]
    suite = load_suite(ROOT / config, overrides)
    dm = create_datamodule(suite)
    assert len(dm.tasks) == 40
    check_methods(suite, dm.tasks)
    ends = json.dumps([dataclasses.asdict(m) for m in (suite.methods[0], suite.methods[-1])])
    params["attributes"] = ["Smiling", "Male", "Young"]
    suite = load_suite(ROOT / config, [*overrides, "--suite.methods", ends, "--suite.stl", "false",
                                       "--suite.dataset.params", json.dumps(params)])
    paths = run_suite(suite)
    assert len(paths) == 2 and all(p.exists() for p in paths)
    record = json.loads(paths[-1].read_text())
    kind = suite.dataset.params["kind"]
    keys = {"binary": ("error", "f1"), "classification": ("acc",)}[kind]
    assert set(record["epochs"][0]["test"]) == {f"{a}/{k}" for a in params["attributes"] for k in keys}
    assert record["dataset_info"]["kind"] == kind and record["dataset_info"]["sizes"]["test"] == 4


def test_mgda_ub_preprocessing_is_bgr_minus_mean_stretched_to_bytes():
    """``mgda_ub_image``: BGR minus MGDA-UB's mean, min..max stretched to 0..255 (rounded half up), PIL bilinear
    resize, / 255; at the input size the resize is the identity, so the values can be computed by hand."""
    rgb = np.array([[[10, 20, 30], [200, 100, 0]], [[255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    bgr = rgb[:, :, ::-1].astype(np.float64) - MGDA_UB_MEAN
    low, high = bgr.min(), bgr.max()
    want = np.floor((bgr - low) * 255.0 / (high - low) + 0.5) / 255.0
    got = mgda_ub_image(Image.fromarray(rgb), 2)
    np.testing.assert_array_equal(got, want)
    assert got.min() == 0.0 and got.max() == 1.0
    assert got[1, 1, 0] == want[1, 1, 0] != got[1, 1, 2]  # black: B - 73.2 and R - 72.4 stretch apart
    big = np.random.default_rng(0).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    bgr = big[:, :, ::-1].astype(np.float64) - MGDA_UB_MEAN
    stretched = np.floor((bgr - bgr.min()) * 255.0 / (bgr.max() - bgr.min()) + 0.5).astype(np.uint8)
    resized = Image.fromarray(stretched).resize((4, 4), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(mgda_ub_image(Image.fromarray(big), 4), np.asarray(resized) / 255.0)
