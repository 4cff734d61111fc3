"""Bad input and faults: each gives a clear error naming the thing at fault, and leaves no half-written record."""

import errno
import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmark import records
from benchmark import tasks as T
from benchmark.checkpointing import RunCheckpoint
from benchmark.config import load_suite
from benchmark.engine import Engine
from benchmark.methods import create
from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import _BUILTINS, register
from benchmark.module import ModuleConfig, MTOModule
from benchmark.runner import RunsFailed, check_methods, create_datamodule, run_suite
from datamodules import SyntheticScenesDataModule, TaskSpec
from datamodules.synthetic_scenes import _sha256
from models import MODELS

SUITE = """
name: faults
dataset:
  name: synthetic_scenes
  params: {{height: 16, width: 24, n_train: 8, n_val: 4, n_test: 4, supersample: 1, generate_workers: 1,
            data_dir: {data}}}
model: {{name: segnet, params: {{width: 4, levels: 2}}}}
train: {{epochs: 1, batch_size: 8, jacobian_mode: loop}}
methods: {methods}
seeds: [0]
stl: false
output_dir: {out}
leaderboard: {out}/leaderboard.md
"""
TASKS = [TaskSpec("semseg", "segmentation", num_classes=8, ignore_index=-1), TaskSpec("depth", "depth"),
         TaskSpec("normal", "normals")]


def suite_file(tmp_path: Path, methods: str = "[{name: ew}]", out: Path | None = None) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(data=tmp_path / "data", out=out or tmp_path / "runs", methods=methods))
    return path


def small_dm(tmp_path: Path) -> SyntheticScenesDataModule:
    return SyntheticScenesDataModule(data_dir=str(tmp_path / "data"), height=16, width=24, n_train=8, n_val=4,
                                     n_test=4, supersample=1, batch_size=4, generate_workers=1)


def rewrite_split(dm: SyntheticScenesDataModule, split: str, **arrays) -> Path:
    """Replace arrays of a cached split and re-sign it in the manifest (a file that passes the checksum)."""
    path = dm.cache_dir / f"{split}.npz"
    data = {**dm.load_split(split), **arrays}
    np.savez_compressed(path, **data)
    manifest = json.loads((dm.cache_dir / "manifest.json").read_text())
    manifest["files"][path.name] = _sha256(path)
    (dm.cache_dir / "manifest.json").write_text(json.dumps(manifest))
    return path


# --- data --------------------------------------------------------------------------------------------------------


def test_missing_empty_or_corrupt_cache_is_regenerated_and_named(tmp_path, capsys):
    dm = small_dm(tmp_path)
    dm.prepare_data()
    assert f"generating {dm.cache_dir / 'train.npz'} (missing)" in capsys.readouterr().out
    original = dm.load_split("train")
    path = dm.cache_dir / "train.npz"
    path.write_bytes(path.read_bytes()[:100])
    dm.prepare_data()
    assert f"generating {path} (checksum mismatch, file corrupt)" in capsys.readouterr().out
    assert all(np.array_equal(original[k], v) for k, v in dm.load_split("train").items())
    for name in ("train.npz", "val.npz", "test.npz", "manifest.json"):
        (dm.cache_dir / name).unlink()
    dm.prepare_data()
    assert f"generating {dm.cache_dir / 'val.npz'} (missing)" in capsys.readouterr().out
    blocked = small_dm(tmp_path / "file")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError, match=str(tmp_path / "file")):
        blocked.prepare_data()


def test_unreadable_cache_file_is_named(tmp_path):
    dm = small_dm(tmp_path)
    dm.prepare_data()
    path = dm.cache_dir / "val.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    manifest = json.loads((dm.cache_dir / "manifest.json").read_text())
    manifest["files"]["val.npz"] = _sha256(path)
    (dm.cache_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"cannot read {path}"):
        dm.setup("fit")


@pytest.mark.parametrize("case", ["dtype", "shape", "labels"])
def test_bad_arrays_in_the_cache_are_named(tmp_path, case):
    dm = small_dm(tmp_path)
    dm.prepare_data()
    label = dm.load_split("train")["label"]
    bad = {"dtype": {"label": label.astype(np.int64)}, "shape": {"label": label[:, :8]},
           "labels": {"label": np.where(label == 0, np.int8(9), label)}}[case]
    path = rewrite_split(dm, "train", **bad)
    message = {"dtype": "array 'label' is int64 .* expected int8", "shape": r"expected int8 \(8, 16, 24\)",
               "labels": r"outside \[0, 8\) and not the ignore index -1, e.g. 9"}[case]
    with pytest.raises(ValueError, match=f"{path}.*{message}"):
        dm.setup("fit")


def good_batch() -> dict:
    return {"image": torch.rand(2, 3, 8, 8), "targets": {
        "semseg": torch.randint(-1, 8, (2, 8, 8)), "depth": torch.rand(2, 1, 8, 8), "normal": torch.rand(2, 3, 8, 8)}}


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b["targets"].update(depth=torch.rand(2, 8, 8)), r"task 'depth': target shape \(2, 8, 8\)"),
    (lambda b: b["targets"].update(semseg=b["targets"]["semseg"].float()), "task 'semseg': target dtype"),
    (lambda b: b["targets"]["semseg"].__setitem__((0, 0, 0), 8), "task 'semseg': target label 8 is outside"),
    (lambda b: b.update(image=b["image"].to(torch.uint8)), "batch 'image': expected a float tensor"),
])
def test_batch_validator_names_the_bad_field(change, message):
    T.validate_batch(TASKS, good_batch())
    batch = good_batch()
    change(batch)
    with pytest.raises(ValueError, match=message):
        T.validate_batch(TASKS, batch)


# --- configuration -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "message"), [
    (["--suite.train.epoch", "2"], "unknown suite key 'train.epoch'; did you mean --suite.train.epochs"),  # no prefix
    (["--suite.train.epochs", "two"], "epochs"),
    (["--suite.train.lr", "-0.1"], r"train.lr=-0.1 must be finite and > 0"),
    (["--suite.train.lr", "1e400"], r"train.lr=inf must be finite and > 0"),
    (["--suite.train.max_nan_skips", "-1"], r"train.max_nan_skips=-1 must be >= 0"),
    (["--suite.train.checkpoint_every_n_batches", "-1"], "train.checkpoint_every_n_batches=-1 must be >= 0"),
])
def test_config_errors_name_the_option_and_field(tmp_path, override, message):
    """A bad override is blamed on the command-line option, never on the suite file (issue 17)."""
    path = suite_file(tmp_path)
    with pytest.raises(ValueError, match=f"(?s)^option {override[0]}: .*{message}"):
        load_suite(path, override)


def test_config_errors_in_the_file_name_the_file_and_field(tmp_path):
    path = suite_file(tmp_path)
    path.write_text(path.read_text().replace("epochs: 1,", "epochs: 0,"))
    with pytest.raises(ValueError, match=f"^suite file {path}: train.epochs=0 must be >= 1"):
        load_suite(path)


def test_unknown_method_dataset_and_bad_hyper_parameter_are_named(tmp_path):
    suite = load_suite(suite_file(tmp_path, "[{name: pcgard}]"))
    with pytest.raises(ValueError, match="method 'pcgard': .*did you mean 'pcgrad'"):
        check_methods(suite, TASKS)
    suite = load_suite(suite_file(tmp_path, "[{name: famo, hparams: {lr: -1}}]"))
    with pytest.raises(ValueError, match="method 'famo': FAMO: lr must be > 0, got -1"):
        check_methods(suite, TASKS)
    suite = load_suite(suite_file(tmp_path), ["--suite.dataset.name", "nyu"])
    with pytest.raises(KeyError, match="unknown dataset 'nyu'"):
        create_datamodule(suite)


def test_a_missing_optional_solver_fails_at_construction(monkeypatch):
    monkeypatch.setitem(sys.modules, "quadprog", None)
    with pytest.raises(ImportError, match="UPGrad needs the QP solver quadprog"):
        create("upgrad", 3)
    with pytest.raises(ImportError, match="MGDA: solver='qp' needs the QP solver quadprog"):
        create("mgda", 3, solver="qp")
    create("mgda", 3, solver="pgd")


# --- misbehaving methods -----------------------------------------------------------------------------------------


class Returns(Method):
    """A plugin stand-in whose loss weights are whatever the test sets."""

    needs = Needs.LOSSES
    value = None

    def loss_weights(self, losses):
        return self.value


class GramianReturns(Returns):
    needs = Needs.GRAMIAN

    def gramian_weights(self, gramian, losses):
        return self.value


class Raises(Method):
    needs = Needs.LOSSES

    def loss_weights(self, losses):
        raise RuntimeError("plugin bug")


@pytest.fixture
def plugins():
    for name, cls in (("test_returns", Returns), ("test_gramian_returns", GramianReturns), ("test_raises", Raises)):
        register(name)(cls)
    yield
    for name in ("test_returns", "test_gramian_returns", "test_raises"):
        _BUILTINS.pop(name)


@pytest.mark.parametrize("name", ["test_returns", "test_gramian_returns"])
@pytest.mark.parametrize(("value", "error", "message"), [
    (torch.ones(1), ValueError, r"returned shape \(1,\), expected a tensor of shape \(2,\)"),
    ([1.0, 1.0], ValueError, "returned a list"),
    (torch.tensor([1.0, float("nan")]), FloatingPointError, "returned non-finite"),
])
def test_engine_names_a_method_returning_a_wrong_shape_or_nan(plugins, name, value, error, message):
    shared, head = nn.Linear(3, 4), nn.Linear(4, 2)
    method = create(name, 2)
    method.value = value.double() if isinstance(value, torch.Tensor) and name == "test_gramian_returns" else value
    losses = head(shared(torch.randn(5, 3))).pow(2).mean(dim=0)
    with pytest.raises(error, match=f"method {name!r} .*{message}"):
        Engine(method, shared.parameters(), head.parameters(), "loop").step(losses)
    assert all(p.grad is None for p in shared.parameters())


def test_a_raising_method_is_named_with_its_run_and_recorded_as_failed(tmp_path, plugins):
    with pytest.raises(RunsFailed, match="plugin bug") as info:
        run_suite(load_suite(suite_file(tmp_path, "[{name: test_raises}]")))
    run_id = "faults/synthetic_scenes/test_raises/seed0"
    assert f"run {run_id} (method 'test_raises') failed; recorded as failed in" in str(info.value)
    (path,) = (tmp_path / "runs").rglob("*.json")
    failed = json.loads(path.read_text())
    assert failed["status"] == "failed" and failed["error"]["type"] == "RuntimeError"
    assert "plugin bug" in Path(failed["error"]["log"]).read_text() and not list((tmp_path / "runs").rglob("*.tmp"))


# --- NaN loss ------------------------------------------------------------------------------------------------------


def nan_module(policy: str, limit: int = 2) -> MTOModule:
    model = MODELS["segnet"]({t.name: T.head_channels(t) for t in TASKS}, width=4, levels=2)
    return MTOModule(model, TASKS, create("ew", 3), ModuleConfig(nan_policy=policy, max_nan_skips=limit))


def test_nan_loss_policy_error_names_the_task_and_skip_stops_at_its_limit():
    bad = torch.tensor([1.0, float("nan"), float("inf")])
    with pytest.raises(FloatingPointError, match=r"non-finite task loss at epoch 0, step 0: \{'depth': nan, "
                                                 r"'normal': inf\} \(nan_policy: skip would skip the step\)"):
        nan_module("error")._finite(bad)
    module = nan_module("skip", limit=2)
    assert module._finite(torch.ones(3))
    assert not module._finite(bad) and not module._finite(bad) and module.stats.nan_skips == 2
    with pytest.raises(FloatingPointError, match="over max_nan_skips=2 bad steps"):
        module._finite(bad)


# --- environment and results folder ------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_names_the_field(tmp_path):
    suite = load_suite(suite_file(tmp_path), ["--suite.train.accelerator", "cuda"])
    with pytest.raises(ValueError, match="train.accelerator='cuda' but torch .* finds no CUDA device"):
        run_suite(suite)
    assert not (tmp_path / "data").exists()


def test_unwritable_results_folder_fails_before_training(tmp_path):
    (tmp_path / "blocker").write_text("a file where the results folder should be")
    suite = load_suite(suite_file(tmp_path, out=tmp_path / "blocker" / "runs"))
    folder = tmp_path / "blocker" / "runs"
    with pytest.raises(OSError, match=f"results folder {folder} \\(output_dir\\) is not writable"):
        run_suite(suite)
    assert not (tmp_path / "data").exists()


def test_disk_full_while_writing_a_record_leaves_the_old_one_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "suite" / "run.json"
    records.write_json_atomic(path, {"run_id": "old"})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "fsync", full)
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device") as info:
        records.write_json_atomic(path, {"run_id": "new", "big": list(range(1000))})
    assert info.value.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == {"run_id": "old"} and sorted(p.name for p in path.parent.iterdir()) == [
        "run.json"]


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_one(tmp_path):
    path = tmp_path / "run.ckpt"
    path.write_bytes(b"last good checkpoint")

    class FullDisk:
        def save_checkpoint(self, filepath, weights_only=None):
            Path(filepath).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))

    with pytest.raises(OSError, match="No space left"):
        RunCheckpoint(path, "key").save(FullDisk())
    assert path.read_bytes() == b"last good checkpoint" and [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]


def _write_many(folder: str, writer: int) -> None:
    for i in range(20):
        records.write_json_atomic(Path(folder) / f"run{i % 10}.json", {"writer": writer, "i": i, "pad": "x" * 5000})
        records.write_json_atomic(Path(folder) / f"own{writer}-{i}.json", {"writer": writer, "i": i})


def test_concurrent_writers_never_corrupt_or_lose_a_record(tmp_path):
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    files = sorted(tmp_path.iterdir())
    assert len(files) == 10 + 4 * 20 and all(p.suffix == ".json" for p in files)
    contents = [json.loads(p.read_text()) for p in files]
    assert all(c["i"] % 10 == int(p.stem[3:]) for p, c in zip(files, contents) if p.stem.startswith("run"))
