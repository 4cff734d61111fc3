"""The submitit launcher: local workers give the records a sequential run gives; SLURM gets the suite's settings."""

import pytest
import submitit
from submitit.slurm import slurm

from benchmark import launch
from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.runner import plan_runs, run_suite
from tests.test_runner import records, write_suite

LAUNCHER = ["--suite.launcher", "{partition: gpu, gpus_per_node: 2, timeout_min: 90, cpus_per_task: 4, mem_gb: 32}"]


def comparable(found: dict[str, dict]) -> dict[str, tuple]:
    return {k: (r["epochs"], r["method_stats"], r["method_hparams"], r["seed"]) for k, r in found.items()}


def test_local_launcher_with_two_workers_matches_a_sequential_run_and_reports_a_failed_job(tmp_path, monkeypatch):
    """Three submitit jobs, two at a time: the failing one is named with its error, the others write records
    identical to those of a sequential run."""
    monkeypatch.chdir(launch.__file__.rsplit("/benchmark/", 1)[0])
    suite_file = write_suite(tmp_path, "[{name: ew}, {name: pcgrad}]")
    overrides = ["--suite.seeds", "[0]", "--suite.train.epochs", "1", "--suite.stl", "false"]
    suite = load_suite(suite_file, overrides)
    bad = launch.PlannedRun("fixed", {"weights": [1.0, 2.0]}, 0, "tiny/synthetic_scenes/bad/seed0")
    runs = [*plan_runs(suite, ["semseg", "depth", "normal"]), bad]
    with pytest.raises(launch.JobsFailed) as info:
        launch.launch_runs(suite, runs, "local", workers=2)
    message = str(info.value)
    assert message.startswith("1 of 3 jobs failed") and "tiny/synthetic_scenes/bad/seed0: ValueError: " in message
    assert "FixedWeights: weights=[1.0, 2.0]" in message
    launched = {k: r for k, r in records(tmp_path).items() if r["status"] == "finished"}
    assert sorted(launched) == ["tiny/synthetic_scenes/ew/seed0", "tiny/synthetic_scenes/pcgrad/seed0"]
    assert records(tmp_path)["tiny/synthetic_scenes/bad/seed0"]["status"] == "failed"  # recorded, with its log
    assert len(list((tmp_path / "runs" / "submitit" / "tiny").glob("*/*_log.out"))) == 3
    run_suite(suite, force=True)
    rerun = {k: r for k, r in records(tmp_path).items() if r["status"] == "finished"}
    assert comparable(rerun) == comparable(launched)


def test_slurm_executor_gets_partition_gpus_and_time_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    suite = load_suite(write_suite(tmp_path), LAUNCHER)
    executor = launch.make_executor(suite, "slurm", workers=None)
    params = executor._executor.parameters
    assert params["partition"] == "gpu" and params["gpus_per_node"] == 2 and params["time"] == 90
    assert params["cpus_per_task"] == 4 and params["mem"] == "32GB" and params["array_parallelism"] == 64
    sbatch = slurm._make_sbatch_string(command="python -m x", folder=tmp_path, **params)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --time=90"):
        assert line in sbatch
    assert launch.make_executor(suite, "slurm", workers=3)._executor.parameters["array_parallelism"] == 3


def test_slurm_path_submits_one_array_and_writes_every_record(tmp_path, monkeypatch):
    """The SLURM code path (map_array, then wait) on submitit's debug executor, which runs jobs in-process."""
    calls = []

    def debug_executor(suite, launcher, workers):
        calls.append((launcher, workers))
        return submitit.AutoExecutor(folder=tmp_path / "debug", cluster="debug")

    monkeypatch.setattr(launch, "make_executor", debug_executor)
    suite_file = write_suite(tmp_path, "[{name: ew}]")
    overrides = ["--suite.seeds", "[0, 1]", "--suite.train.epochs", "1", "--suite.stl", "false"]
    assert main(["run", str(suite_file), "--launcher", "slurm", *overrides]) == 0
    assert calls == [("slurm", None)] and (tmp_path / "runs" / "leaderboard.md").is_file()
    assert sorted(records(tmp_path)) == ["tiny/synthetic_scenes/ew/seed0", "tiny/synthetic_scenes/ew/seed1"]
