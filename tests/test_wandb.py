"""W&B: the mode rules, a tiny suite logged offline and read back from the run files, --no-wandb, wandb-sync."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

import benchmark.wandb_log as wandb_log
from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import _BUILTINS, register
from benchmark.records import write_json_atomic
from benchmark.run_log import StepSeries
from benchmark.runner import create_datamodule, run_suite
from benchmark.tasks import metric_table
from benchmark.wandb_log import find_offline_runs, resolve_mode, sync_command
from tests.test_runner import records, write_suite
from tests.wandb_offline import OfflineRun

TASKS = ("semseg", "depth", "normal")
PAIRS = ("semseg/depth", "semseg/normal", "depth/normal")


@pytest.mark.parametrize("setting, env, expected", [
    ("auto", {}, "offline"),
    ("auto", {"WANDB_MODE": "offline", "WANDB_API_KEY": "k"}, "offline"),
    ("auto", {"WANDB_API_KEY": "k"}, "online"),
    ("auto", {"WANDB_MODE": "online"}, "online"),
    ("auto", {"WANDB_MODE": "dryrun"}, "offline"),
    ("auto", {"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}, "off"),
    ("offline", {"WANDB_MODE": "online", "WANDB_API_KEY": "k"}, "offline"),
    ("online", {}, "online"),
    ("off", {"WANDB_MODE": "online"}, "off"),
])
def test_mode_rules(setting, env, expected):
    assert resolve_mode(setting, env) == expected


def test_unknown_wandb_mode_in_the_environment_is_an_error():
    with pytest.raises(ValueError, match="WANDB_MODE='onlin'"):
        resolve_mode("auto", {"WANDB_MODE": "onlin"})


def test_step_series_is_thinned_evenly():
    series = StepSeries(max_points=8)
    for b in range(100):
        series.add({"batch": b})
    batches = [p["batch"] for p in series.points]
    assert batches == list(range(0, 100, series.stride)) and len(batches) <= 8 and series.stride == 16
    assert series.seen == 100


def fake_stl_records(suite, runs: Path) -> dict[str, float]:
    """One finished STL record per task with made-up, non-zero test metrics; returns the baseline they make."""
    baseline = {}
    for i, task in enumerate(create_datamodule(suite).tasks):
        metrics = metric_table([task])
        values = {k: 0.5 + i + 0.25 * j for j, k in enumerate(metrics)}
        baseline.update(values)
        run_id = f"tiny/synthetic_scenes/stl-{task.name}/seed0"
        write_json_atomic(runs / f"{run_id}.json", {
            "schema_version": 1, "run_id": run_id, "suite": "tiny", "dataset": "synthetic_scenes", "seed": 0,
            "method": f"stl-{task.name}", "kind": "stl", "stl_task": task.name, "metrics": metrics,
            "epochs": [{"epoch": 0, "step": 2, "val": values, "val_loss": 1.0, "test": values}],
            "status": "finished"})
    return baseline


def test_offline_runs_hold_steps_epochs_config_and_record(tmp_path, capsys):
    methods = "[{name: ew}, {name: imtl_h}, {name: cso, model: {task_bn: true}}]"
    suite = load_suite(write_suite(tmp_path, methods), ["--suite.stl", "false", "--suite.seeds", "[0]",
                                                        "--suite.logging.wandb", "offline",
                                                        "--suite.logging.log_every_n_steps", "1"])
    baseline = fake_stl_records(suite, tmp_path / "runs")
    run_suite(suite)
    found = {r["method"]: r for r in records(tmp_path).values() if r["kind"] == "mtl"}
    dirs = find_offline_runs(tmp_path / "runs")
    assert len(dirs) == 3 and all(d.parent == tmp_path / "runs" / "wandb" for d in dirs)
    runs = {run.job_type: (run, d) for d in dirs for run in [OfflineRun(d)]}
    assert set(runs) == {"ew", "imtl_h", "cso"}
    for label, (run, run_dir) in runs.items():
        record = found[label]
        assert run.group == "tiny/synthetic_scenes" and run.name == f"{label}/seed0" and run.exit_code == 0
        assert run.config["suite"] == json.loads(json.dumps(suite.to_dict()))
        assert run.config["run"]["run_id"] == record["run_id"]
        assert run.config["method_hparams"] == record["method_hparams"]
        assert run.tags == ["suite:tiny", "dataset:synthetic_scenes", f"method:{label}", "seed:0"]
        assert record["logging"]["wandb"] == "offline" and record["logging"]["wandb_run_dir"] == str(run_dir)
        keys = run.keys()
        expected = {"train/step_time", *(f"train/grad_norm/{t}" for t in TASKS),
                    *(f"train/grad_cos/{p}" for p in PAIRS), *(f"train/loss_{t}" for t in TASKS),
                    "test/delta_m", "val_loss", *(f"test/{k}" for k in record["metrics"]),
                    *(f"val/{k}" for k in record["metrics"])}
        expected |= {f"train/priority/{t}" for t in TASKS} if label == "cso" else {f"train/weight_{t}" for t in TASKS}
        assert expected <= keys, sorted(expected - keys)
        assert not any(re.fullmatch(r"(train|epoch_mean)/weight_\d+", k) for k in keys), sorted(keys)
        points = record["step_log"]["points"]
        assert [p["batch"] for p in points] == [0, 1, 2, 3] and record["step_log"]["every"] == 1
        for p in points:
            assert run.history[p["batch"]]["train/grad_cos/semseg/depth"] == pytest.approx(p["grad_cos/semseg/depth"])
            assert run.history[p["batch"]]["train/step_time"] == pytest.approx(p["step_time"])
        epoch_rows = sorted((s, row) for s, row in run.history.items() if "test/delta_m" in row)
        assert [(step, row["epoch"]) for step, row in epoch_rows] == [(1, 0), (3, 1)]
        for (_, row), entry in zip(epoch_rows, record["epochs"]):
            changes = [(-1 if record["metrics"][k]["direction"] == "higher" else 1) * (v - baseline[k]) / baseline[k]
                       for k, v in entry["test"].items()]
            assert row["test/delta_m"] == pytest.approx(100 * sum(changes) / len(changes))
            assert row["test/semseg/miou"] == pytest.approx(entry["test"]["semseg/miou"])
        assert "record.json" in run.files
        assert json.loads((run_dir / "files" / "record.json").read_text()) == record
        assert record["logging"]["grad_stats"]["steps"] == 4
        assert record["logging"]["delta_m_baseline"].startswith("STL records (3 runs")
    assert found["cso"]["method_hparams"]["mode"] == "mixed"  # defaults included, not only the suite's hparams
    assert found["imtl_h"]["logging"]["grad_stats"]["sources"] == ["engine"]
    assert found["ew"]["logging"]["grad_stats"]["sources"] == ["extra"]

    capsys.readouterr()
    assert main(["wandb-sync", str(tmp_path / "runs"), "--dry-run"]) == 0
    assert main(["leaderboard", str(tmp_path / "runs"), "--out", str(tmp_path / "lb.md")]) == 0


def test_no_wandb_writes_no_wandb_files_but_keeps_the_step_log(tmp_path):
    suite_file = write_suite(tmp_path, "[{name: ew}]")
    assert main(["run", str(suite_file), "--no-wandb", "--suite.stl", "false", "--suite.seeds", "[0]",
                 "--suite.logging.log_every_n_steps", "2"]) == 0
    assert not [p for p in tmp_path.rglob("*") if "wandb" in p.name]
    (record,) = records(tmp_path).values()
    assert record["logging"]["wandb"] == "off" and record["logging"]["wandb_run_id"] is None
    assert [p["batch"] for p in record["step_log"]["points"]] == [0, 2]
    assert "grad_cos/semseg/depth" in record["method_stats"]


class Failing(Method):
    needs = Needs.LOSSES

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.calls = 0

    def loss_weights(self, losses):
        self.calls += 1
        if self.calls > 2:
            raise RuntimeError("boom")
        return torch.ones_like(losses)


def test_a_failed_run_is_finished_with_exit_code_1_and_keeps_its_steps(tmp_path):
    register("test_failing")(Failing)
    try:
        suite = load_suite(write_suite(tmp_path, "[{name: test_failing}]"),
                           ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.logging.wandb", "offline",
                            "--suite.logging.log_every_n_steps", "1"])
        with pytest.raises(RuntimeError, match="boom"):
            run_suite(suite)
    finally:
        _BUILTINS.pop("test_failing", None)
    (run_dir,) = find_offline_runs(tmp_path / "runs")
    run = OfflineRun(run_dir)
    assert run.exit_code == 1 and sorted(run.history) == [0, 1]
    assert [r["status"] for r in records(tmp_path).values()] == ["failed"]


def test_logging_changes_no_training_result(tmp_path):
    """The probes (extra passes, a BN-frozen forward for CSO) must not alter what is trained."""
    methods = "[{name: ew}, {name: mgda_ub}, {name: cso, model: {task_bn: true}}]"
    suite = load_suite(write_suite(tmp_path, methods), ["--suite.stl", "false", "--suite.seeds", "[0]",
                                                        "--suite.train.epochs", "1", "--suite.logging.wandb", "off",
                                                        "--suite.logging.log_every_n_steps", "1"])
    run_suite(suite)
    logged = records(tmp_path)
    suite.logging.log_every_n_steps = 0
    run_suite(suite, force=True)
    plain = records(tmp_path)
    for run_id, record in logged.items():
        assert record["step_log"]["points"] and not plain[run_id]["step_log"]["points"]
        assert [{k: e[k] for k in ("val", "test", "val_loss")} for e in record["epochs"]] == \
               [{k: e[k] for k in ("val", "test", "val_loss")} for e in plain[run_id]["epochs"]], run_id


def test_wandb_sync_finds_offline_runs_and_builds_the_command(tmp_path, monkeypatch, capsys):
    for folder, log in [("runs/wandb/offline-run-1-a", "run-a.wandb"), ("runs/x/wandb/offline-run-2-b", "run-b.wandb"),
                        ("runs/wandb/run-3-c", "run-c.wandb"), ("runs/wandb/offline-run-4-d", None)]:
        (tmp_path / folder).mkdir(parents=True)
        if log:
            (tmp_path / folder / log).write_bytes(b"")
    calls = []
    monkeypatch.setattr(wandb_log.subprocess, "run",
                        lambda cmd, check: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert main(["wandb-sync", str(tmp_path / "runs"), "--project", "p", "--include-synced"]) == 0
    (command,) = calls
    assert command[1:] == ["-m", "wandb", "sync", "--project", "p", "--include-synced",
                           str(tmp_path / "runs/wandb/offline-run-1-a"), str(tmp_path / "runs/x/wandb/offline-run-2-b")]
    assert main(["wandb-sync", str(tmp_path / "runs" / "x" / "wandb" / "offline-run-2-b" / "..")]) == 0
    assert main(["wandb-sync", str(tmp_path / "data")]) == 1
    assert "does not exist" in " ".join(capsys.readouterr().err.split())
    (tmp_path / "empty").mkdir()
    assert main(["wandb-sync", str(tmp_path / "empty")]) == 1
    assert "no offline W&B runs" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(ValueError):
        sync_command([])
