"""Determinism and resume: data order from (seed, epoch), bit-identical reruns, SIGKILL and resume, grid reruns."""

import errno
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.checkpointing import KILL_ENV, checkpoint_path, read_checkpoint
from benchmark.config import load_suite
from benchmark.module import TRAINING_STATE
from benchmark.records import load_records, read_record
from benchmark.report.markdown import write_leaderboard
from benchmark.runner import RunsFailed, run_suite
from datamodules.sampling import EpochShuffleSampler, epoch_seed

ROOT = Path(__file__).resolve().parent.parent
BATCHES_PER_EPOCH, EPOCHS = 3, 2
SUITE = """
name: tiny
dataset:
  name: synthetic_scenes
  params: {{height: 16, width: 24, n_train: 24, n_val: 8, n_test: 8, supersample: 1, generate_workers: 1,
            data_dir: {data}}}
model: {{name: segnet, params: {{width: 4, levels: 2}}}}
train: {{epochs: 2, batch_size: 8, jacobian_mode: loop, checkpoint_every_n_batches: 2}}
methods: {methods}
seeds: [0]
stl: false
output_dir: {out}
leaderboard: {out}/leaderboard.md
"""
STATEFUL = "[{name: ew}, {name: uw}, {name: famo}, {name: nash_mtl}, {name: cso, model: {task_bn: true}}]"
VOLATILE = ("timing", "created", "resumes", "git_dirty", "config", "logging")


def write_suite(tmp_path: Path, out: str, methods: str) -> Path:
    path = tmp_path / f"{out}.yaml"
    path.write_text(SUITE.format(data=tmp_path / "data", out=tmp_path / out, methods=methods))
    return path


def records(folder: Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in map(read_record, sorted(folder.rglob("seed*.json")))}


def stable(record: dict) -> dict:
    """A record without wall-clock fields and paths; the step count and the logged step series (less its
    timings) stay."""
    points = [{k: v for k, v in p.items() if not k.endswith("time")} for p in record["step_log"]["points"]]
    return ({k: v for k, v in record.items() if k not in VOLATILE}
            | {"steps": record["timing"]["steps"], "step_log": points})


def test_epoch_sampler_order_is_a_function_of_seed_and_epoch():
    a, b = EpochShuffleSampler(10, seed=3), EpochShuffleSampler(10, seed=3)
    list(a), list(a)  # drawing epochs must not change later ones
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    b.set_epoch(1)
    assert list(b) != list(a)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(epoch_seed(3, 2))).tolist()
    assert list(a) == expected
    assert epoch_seed(3, 2) != epoch_seed(2, 3)
    a.skip_once(4)
    assert list(a) == expected[4:] and list(a) == expected
    with pytest.raises(ValueError, match="cannot skip 11 of 10"):
        a.skip_once(11)


def test_same_seed_gives_bit_identical_records(tmp_path):
    methods = "[{name: pcgrad}, {name: rlw}, {name: famo}]"
    first = load_suite(write_suite(tmp_path, "a", methods), ["--suite.train.checkpoint_every_n_batches", "0"])
    second = load_suite(write_suite(tmp_path, "b", methods), ["--suite.train.checkpoint_every_n_batches", "0"])
    run_suite(first)
    run_suite(second)
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert len(a) == 3 and a.keys() == b.keys()
    for run_id in a:
        assert stable(a[run_id]) == stable(b[run_id]), run_id
        assert a[run_id]["timing"]["steps"] == EPOCHS * BATCHES_PER_EPOCH and a[run_id]["resumes"] == []
    assert not list((tmp_path / "a").rglob("*.ckpt"))


def run_cli(suite_file: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONHASHSEED": "0"}
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = str(kill_at)
    return subprocess.run([sys.executable, "-m", "benchmark.cli", "run", str(suite_file)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def kill_and_resume(tmp_path: Path, methods: str, count: int) -> None:
    """Kill every run once (SIGKILL at a random batch after its first checkpoint), rerun until all finish, and
    compare with an uninterrupted run."""
    run_suite(load_suite(write_suite(tmp_path, "reference", methods)))
    suite_file = write_suite(tmp_path, "runs", methods)
    out = tmp_path / "runs"
    rng = random.Random(7)
    finished_at = {}
    for attempt in range(count):
        kill_at = rng.randint(3, EPOCHS * BATCHES_PER_EPOCH)  # the first checkpoint is after batch 2
        proc = run_cli(suite_file, kill_at)
        assert proc.returncode == -9, f"attempt {attempt} (kill at batch {kill_at}) was not SIGKILLed:\n{proc.stdout}"
        ckpts = list(out.rglob("*.ckpt"))
        assert len(ckpts) == 1 and not list(out.rglob("*.tmp"))
        state = read_checkpoint(ckpts[0])[TRAINING_STATE]
        assert state["step_times"] and isinstance(state["history"], list)
        finished_at.update({p: p.stat().st_mtime_ns for p in out.rglob("seed*.json")})
    proc = run_cli(suite_file)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p: finished_at[p] for p in finished_at} == {p: p.stat().st_mtime_ns for p in finished_at}
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("*.tmp"))
    expected, resumed = records(tmp_path / "reference"), records(out)
    assert len(resumed) == count and expected.keys() == resumed.keys()
    for run_id, rec in resumed.items():
        ref = expected[run_id]
        assert rec["resumes"] and rec["resumes"][0]["global_step"] > 0, run_id
        assert rec["timing"]["steps"] == ref["timing"]["steps"] and rec["nan_skips"] == ref["nan_skips"]
        assert [e["step"] for e in rec["epochs"]] == [e["step"] for e in ref["epochs"]]
        for got, want in zip(rec["epochs"], ref["epochs"], strict=True):
            for split in ("val", "test"):
                for key, value in want[split].items():
                    assert got[split][key] == pytest.approx(value, abs=1e-6, rel=0), (run_id, split, key)
        for key, value in ref["method_stats"].items():
            assert rec["method_stats"][key] == pytest.approx(value, abs=1e-6, rel=0), (run_id, key)
    loaded, _ = load_records(out)
    assert sorted(r["run_id"] for r in loaded) == sorted(expected)
    board = write_leaderboard(out, tmp_path / "board.md").read_text()
    assert f"Built from {count} run records" in board


def test_cso_killed_mid_training_resumes_to_the_same_result(tmp_path):
    kill_and_resume(tmp_path, "[{name: cso, model: {task_bn: true}}]", 1)


def test_sparse_checkpoints_and_evaluations_resume_to_the_same_result(tmp_path):
    """Checkpoints and evaluations every 2nd epoch of 4: a kill in epoch 4 resumes from epoch 2's checkpoint and
    the record (2 evaluations) equals an uninterrupted run's."""
    train = ("train: {epochs: 4, batch_size: 8, jacobian_mode: loop, checkpoint_every_n_epochs: 2, "
             "eval_every_n_epochs: 2}")
    methods = "[{name: famo}]"

    def suite_file(out: str) -> Path:
        path = write_suite(tmp_path, out, methods)
        default = "train: {epochs: 2, batch_size: 8, jacobian_mode: loop, checkpoint_every_n_batches: 2}"
        path.write_text(path.read_text().replace(default, train))
        return path

    run_suite(load_suite(suite_file("reference")))
    runs = suite_file("runs")
    assert run_cli(runs, kill_at=3 * BATCHES_PER_EPOCH + 2).returncode == -9
    (ckpt,) = (tmp_path / "runs").rglob("*.ckpt")
    saved = read_checkpoint(ckpt)
    assert saved["global_step"] == 2 * BATCHES_PER_EPOCH and len(saved[TRAINING_STATE]["history"]) == 1
    proc = run_cli(runs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (ref,), (rec,) = records(tmp_path / "reference").values(), records(tmp_path / "runs").values()
    assert rec["resumes"] == [{"epoch": 1, "global_step": 2 * BATCHES_PER_EPOCH}]
    assert [e["epoch"] for e in ref["epochs"]] == [1, 3] and len(rec["epochs"]) == 2
    assert stable(rec) == stable(ref)


@pytest.mark.slow
def test_stateful_methods_killed_and_resumed_match_an_uninterrupted_run(tmp_path):
    kill_and_resume(tmp_path, STATEFUL, 5)


def test_a_failed_record_write_keeps_the_checkpoint_which_resumes_only_its_own_configuration(tmp_path, monkeypatch):
    import benchmark.runner.train as runner

    suite = load_suite(write_suite(tmp_path, "runs", "[{name: famo}]"), ["--suite.train.epochs", "1"])
    ckpt = checkpoint_path(tmp_path / "runs", "tiny/synthetic_scenes/famo/seed0")
    real_write = runner.write_json_atomic

    def disk_full(path, payload):
        raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")

    monkeypatch.setattr(runner, "write_json_atomic", disk_full)
    with pytest.raises(RunsFailed, match="No space left") as info:
        run_suite(suite)
    assert f"rerun to resume from {ckpt}" in str(info.value)
    assert ckpt.exists() and not list((tmp_path / "runs").rglob("seed*.json"))
    monkeypatch.setattr(runner, "write_json_atomic", real_write)
    changed = load_suite(write_suite(tmp_path, "runs", "[{name: famo}]"),
                         ["--suite.train.epochs", "1", "--suite.train.lr", "0.01"])
    with pytest.raises(RunsFailed, match=f"checkpoint {ckpt} belongs to another configuration") as info:
        run_suite(changed)
    assert "rerun to resume" not in str(info.value)
    run_suite(suite)
    (rec,) = records(tmp_path / "runs").values()
    assert rec["resumes"] == [{"epoch": 0, "global_step": BATCHES_PER_EPOCH}] and not ckpt.exists()
    assert rec["timing"]["steps"] == BATCHES_PER_EPOCH and len(rec["epochs"]) == 1
    run_suite(changed, force=True)
    (rec,) = records(tmp_path / "runs").values()
    assert rec["resumes"] == [] and rec["config"]["train"]["lr"] == 0.01


def test_a_truncated_checkpoint_is_named_in_the_error(tmp_path):
    suite = load_suite(write_suite(tmp_path, "runs", "[{name: ew}]"))
    ckpt = checkpoint_path(tmp_path / "runs", "tiny/synthetic_scenes/ew/seed0")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(RunsFailed, match=f"checkpoint {ckpt} cannot be loaded safely"):
        run_suite(suite)
    assert [read_record(p)["status"] for p in (tmp_path / "runs").rglob("seed*.json")] == ["failed"]


def test_grid_rerun_skips_finished_runs_and_leftovers_are_not_counted(tmp_path, capsys):
    suite = load_suite(write_suite(tmp_path, "runs", "[{name: ew}, {name: uw}]"),
                       ["--suite.train.epochs", "1", "--suite.train.checkpoint_every_n_batches", "0"])
    paths = run_suite(suite)
    folder = paths[0].parent
    (folder / ".seed0.json.abc123.tmp").write_text('{"run_id": "half')
    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    capsys.readouterr()
    run_suite(suite)
    assert "all 2 runs already have records" in capsys.readouterr().out.replace("\n", " ")
    assert mtimes == {p: p.stat().st_mtime_ns for p in paths}
    loaded, _ = load_records(tmp_path / "runs")
    assert sorted(r["method"] for r in loaded) == ["ew", "uw"]
    board = write_leaderboard(tmp_path / "runs", tmp_path / "board.md").read_text()
    assert board.count("| ew |") == 1 and board.count("| uw |") == 1
    copy = folder / "seed0 (copy).json"
    copy.write_text(paths[0].read_text())
    with pytest.raises(ValueError, match=r"run tiny/synthetic_scenes/ew/seed0 appears twice: .*seed0 \(copy\).json"):
        load_records(tmp_path / "runs")
    assert json.loads(copy.read_text())["run_id"] == "tiny/synthetic_scenes/ew/seed0"
