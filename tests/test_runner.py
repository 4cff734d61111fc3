"""End to end: a tiny suite through the CLI, records, skipping, determinism, and failures that leave no record."""

import json
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import _BUILTINS, register
from benchmark.records import read_record
from benchmark.report.markdown import write_leaderboard
from benchmark.runner import RunsFailed, create_datamodule, run_suite

SUITE = """
name: tiny
dataset:
  name: synthetic_scenes
  params: {{height: 16, width: 24, n_train: 16, n_val: 8, n_test: 8, supersample: 1, generate_workers: 1,
            data_dir: {data}}}
model: {{name: segnet, params: {{width: 4, levels: 2}}}}
train: {{epochs: 2, batch_size: 8, jacobian_mode: loop}}
methods: {methods}
seeds: [0, 1]
output_dir: {out}
leaderboard: {out}/leaderboard.md
"""


def write_suite(tmp_path: Path, methods: str = "[{name: ew}, {name: mgda_ub}, {name: imtl_h}]") -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(data=tmp_path / "data", out=tmp_path / "runs", methods=methods))
    return path


def records(tmp_path: Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in map(read_record, sorted((tmp_path / "runs").rglob("seed*.json")))}


def test_suite_runs_end_to_end_and_skips_finished_runs(tmp_path, capsys):
    suite_file = write_suite(tmp_path)
    assert main(["run", str(suite_file)]) == 0
    found = records(tmp_path)
    assert len(found) == 3 * 2 + 3 * 2
    rec = found["tiny/synthetic_scenes/mgda_ub/seed1"]
    assert rec["status"] == "finished" and rec["seed"] == 1 and rec["kind"] == "mtl"
    assert rec["method_hparams"]["grad_source"] == "rep_full"
    assert len(rec["epochs"]) == 2 and rec["epochs"][-1]["step"] == 4
    assert set(rec["epochs"][0]["test"]) == set(rec["metrics"]) and len(rec["metrics"]) == 10
    assert rec["versions"]["torch_build"] == torch.__version__ and "git_commit" in rec
    assert rec["config"]["name"] == "tiny" and rec["dataset_info"]["height"] == 16
    assert rec["timing"]["steps"] == 4 and rec["timing"]["step_time_mean_s"] > 0
    stl = found["tiny/synthetic_scenes/stl-depth/seed0"]
    assert stl["kind"] == "stl" and set(stl["metrics"]) == {"depth/abs_err", "depth/rel_err", "depth/rmse"}
    board = (tmp_path / "runs" / "leaderboard.md").read_text()
    for label in ("ew", "mgda_ub", "imtl_h", "Selection rule", "STL"):
        assert label in board

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("seed*.json")}
    capsys.readouterr()
    assert main(["run", str(suite_file)]) == 0
    assert "all 12 runs already have records" in capsys.readouterr().out.replace("\n", " ")  # no 0/0 bar
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("seed*.json")}
    assert main(["run", str(suite_file), "--suite.train.lr=0.01"]) == 1  # a changed config never reuses a record
    captured = capsys.readouterr()
    refused = " ".join((captured.out + captured.err).split())
    assert "12 run(s) already have records made with other settings" in refused and "--force" in refused
    assert "tiny/synthetic_scenes/ew/seed0: record" in refused and "train.lr: 0.001 -> 0.01" in refused
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("seed*.json")}
    assert main(["leaderboard", str(tmp_path / "runs"), "--out", str(tmp_path / "lb.md")]) == 0
    board = (tmp_path / "lb.md").read_text()
    assert board.count("| ew |") == 2  # EW's row once in the paired table, once in the unpaired one
    assert board.count("| ew | reference |") == 1


def test_same_seed_gives_identical_records(tmp_path):
    suite_file = write_suite(tmp_path, "[{name: mgda}, {name: imtl_h}]")
    suite = load_suite(suite_file, ["--suite.stl", "false", "--suite.seeds", "[3]"])
    run_suite(suite)
    first = records(tmp_path)
    run_suite(suite, force=True)
    second = records(tmp_path)
    for run_id, rec in first.items():
        assert rec["epochs"] == second[run_id]["epochs"], run_id
        assert rec["method_stats"] == second[run_id]["method_stats"], run_id


def test_worker_processes_give_the_records_of_one_thread_in_this_process(tmp_path, monkeypatch):
    """``run_suite(processes=2)`` (``mtobench run --workers 2``) splits this process's threads between two spawned
    workers; each run's numbers are those of the same run trained here with that many threads."""
    suite = load_suite(write_suite(tmp_path, "[{name: ew}, {name: famo}]"),
                       ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.logging.wandb", "off"])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_suite(suite, processes=2)
        parallel = records(tmp_path)
        torch.set_num_threads(1)
        run_suite(suite, force=True)
        serial = records(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert sorted(parallel) == ["tiny/synthetic_scenes/ew/seed0", "tiny/synthetic_scenes/famo/seed0"]
    for run_id, rec in parallel.items():
        assert rec["effective"]["cpu_threads"] == serial[run_id]["effective"]["cpu_threads"] == 1
        assert rec["epochs"] == serial[run_id]["epochs"] and rec["method_stats"] == serial[run_id]["method_stats"]
    with pytest.raises(ValueError, match="processes=0 must be >= 1"):
        run_suite(suite, processes=0)


@pytest.mark.parametrize("epochs, every, final, evaluated", [(3, 2, 1, [1, 2]), (6, 4, 2, [3, 4, 5])])
def test_evaluation_every_n_epochs_and_the_final_ones(tmp_path, epochs, every, final, evaluated):
    suite = load_suite(write_suite(tmp_path, "[{name: ew}]"),
                       ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.logging.wandb", "off",
                        "--suite.train.epochs", str(epochs), "--suite.train.eval_every_n_epochs", str(every),
                        "--suite.train.eval_final_epochs", str(final)])
    run_suite(suite)
    (rec,) = records(tmp_path).values()
    assert [e["epoch"] for e in rec["epochs"]] == evaluated and rec["timing"]["steps"] == epochs * 2
    assert all(set(e) >= {"val", "test", "val_loss", "method_stats"} for e in rec["epochs"])
    change = 100 * (1 - rec["epochs"][-1]["val_loss"] / rec["epochs"][-2]["val_loss"])
    board = write_leaderboard(tmp_path / "runs", tmp_path / "board.md").read_text()
    assert f"largest {change:+.2f}% (`{rec['run_id']}`) over 1 runs" in board


class Exploding(Method):
    needs = Needs.LOSSES

    def __init__(self, num_tasks: int, after: int = 2) -> None:
        super().__init__(num_tasks)
        self.after, self.calls = after, 0

    def loss_weights(self, losses):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return torch.ones_like(losses)


class NanLoss(Method):
    needs = Needs.LOSSES

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)

    def transform_losses(self, losses):
        return losses

    def loss_weights(self, losses):
        return torch.ones_like(losses)


class PerTaskSteps(Method):
    """Owns its step: one optimizer step per task on a fresh forward pass (the shape of CSO's Phase 1)."""

    needs = Needs.LOSSES

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.optimizer_steps = 0

    def own_step(self, ctx):
        for k in range(len(ctx.task_names)):
            ctx.optimizer.zero_grad(set_to_none=True)
            ctx.backward(ctx.losses()[k])
            ctx.optimizer.step()
            self.optimizer_steps += 1
        return True

    def stats(self):
        return {"optimizer_steps": float(self.optimizer_steps)}


@pytest.fixture
def test_methods():
    register("test_exploding")(Exploding)
    register("test_per_task_steps")(PerTaskSteps)
    yield
    _BUILTINS.pop("test_exploding", None)
    _BUILTINS.pop("test_per_task_steps", None)


def test_method_can_own_the_step(tmp_path, test_methods):
    suite = load_suite(write_suite(tmp_path, "[{name: test_per_task_steps}]"),
                       ["--suite.stl", "false", "--suite.seeds", "[0]"])
    run_suite(suite)
    (rec,) = records(tmp_path).values()
    assert rec["timing"]["steps"] == 4
    assert rec["method_stats"]["optimizer_steps"]["last"] == 3 * 4
    assert rec["epochs"][-1]["step"] == 3 * 4


def test_failed_run_is_recorded_as_failed_and_the_others_train(tmp_path, test_methods):
    suite = load_suite(write_suite(tmp_path, "[{name: test_exploding}, {name: ew}]"), ["--suite.stl", "false"])
    with pytest.raises(RunsFailed, match="(?s)2 of 4 runs failed.*boom"):
        run_suite(suite)
    names = sorted(p.relative_to(tmp_path / "runs").as_posix() for p in (tmp_path / "runs").rglob("*")
                   if p.is_file() and "wandb" not in p.parts and p.suffix != ".lock")
    failed = "tiny/synthetic_scenes/test_exploding/seed"
    assert names == ["tiny/synthetic_scenes/ew/seed0.json", "tiny/synthetic_scenes/ew/seed1.json",
                     *(f"{failed}{s}{ext}" for s in (0, 1) for ext in (".ckpt", ".failed.log", ".json"))]
    status = {p.parent.name: json.loads(p.read_text())["status"] for p in (tmp_path / "runs").rglob("seed*.json")}
    assert status == {"ew": "finished", "test_exploding": "failed"}


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_nan_loss_is_never_applied(tmp_path, monkeypatch, policy):
    suite = load_suite(write_suite(tmp_path, "[{name: ew}]"),
                       ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.train.nan_policy", policy,
                        "--suite.train.max_nan_skips", "100"])
    import benchmark.tasks as tasks

    real = tasks.task_loss

    def nan_depth(spec, raw, target):
        loss = real(spec, raw, target)
        return loss * float("nan") if spec.name == "depth" else loss

    monkeypatch.setattr(tasks, "task_loss", nan_depth)
    if policy == "error":
        run_suite(suite)
        (rec,) = records(tmp_path).values()
        assert rec["status"] == "diverged" and "'depth': nan" in rec["status_reason"] and rec["epochs"] == []
    else:
        run_suite(suite)
        (rec,) = records(tmp_path).values()
        assert rec["nan_skips"] == 4 and rec["timing"]["steps"] == 0


def test_unknown_dataset_and_cli_errors(tmp_path, capsys):
    suite = load_suite(write_suite(tmp_path), ["--suite.dataset.name", "synthetic_scene"])
    with pytest.raises(KeyError, match="did you mean 'synthetic_scenes'"):
        create_datamodule(suite)
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2  # a usage error, on stderr (issue 17)
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("ew", "mgda", "mgda_ub", "imtl_g", "imtl_l", "imtl_h"))


def test_cso_and_a_task_bn_baseline_run_end_to_end(tmp_path):
    methods = ("[{name: cso, model: {task_bn: true}}, {name: ew, label: ew-taskbn, model: {task_bn: true}},"
               " {name: ew}]")
    suite = load_suite(write_suite(tmp_path, methods), ["--suite.stl", "false", "--suite.seeds", "[0]"])
    run_suite(suite)
    found = records(tmp_path)
    cso = found["tiny/synthetic_scenes/cso/seed0"]
    assert cso["model"]["params"]["task_bn"] is True and cso["method_hparams"]["mode"] == "mixed"
    assert found["tiny/synthetic_scenes/ew-taskbn/seed0"]["model"]["overrides"] == {"task_bn": True}
    assert found["tiny/synthetic_scenes/ew/seed0"]["model"]["overrides"] == {}
    stats = cso["method_stats"]
    assert stats["phase1"]["mean"] in (0.5, 0.75, 1.0)  # epoch 0 is all Phase 1; 2 steps per epoch
    shares = [stats[f"priority/{t}"]["last"] for t in ("semseg", "depth", "normal")]
    assert abs(sum(shares) - 1) < 1e-6
    first = cso["epochs"][0]["method_stats"]
    assert first["phase1"] == 1.0 and "priority/stem/depth" in first
    # Phase 1 steps K times per batch: 2 epochs x 2 batches, epoch 0 all Phase 1
    assert cso["epochs"][-1]["step"] >= 2 * 3 + 2
    text = write_leaderboard(tmp_path / "runs", tmp_path / "board.md", plot=True).read_text()
    diagnostics = text.split("Method diagnostics")[0].split("| method | Phase-1 steps")[1]
    assert "priority normal" in diagnostics
    rows = [line for line in diagnostics.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["cso"] and "—" not in rows[0]
    assert (tmp_path / "board_priority.png").stat().st_size > 0


def test_rep_mode_cannot_use_a_task_bn_model(tmp_path):
    suite = load_suite(write_suite(tmp_path, "[{name: mgda_ub, model: {task_bn: true}}]"),
                       ["--suite.stl", "false", "--suite.seeds", "[0]"])
    with pytest.raises(ValueError, match="grad_source='params'"):
        run_suite(suite)


def test_every_builtin_method_trains_two_epochs_without_nan(tmp_path, capsys):
    from benchmark.methods.registry import _BUILTINS

    names = sorted(_BUILTINS)
    entries = ", ".join(f"{{name: {n}, model: {{task_bn: true}}}}" if n == "cso" else f"{{name: {n}}}" for n in names)
    suite = load_suite(write_suite(tmp_path, f"[{entries}]"), ["--suite.stl", "false", "--suite.seeds", "[0]"])
    run_suite(suite)
    found = records(tmp_path)
    assert sorted(r["method"] for r in found.values()) == names
    for rec in found.values():
        assert len(rec["epochs"]) == 2 and rec["nan_skips"] == 0, rec["run_id"]
        values = [v for e in rec["epochs"] for v in e["test"].values()]
        assert all(v == v for v in values), f"{rec['run_id']}: NaN metric"
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    for name in names:
        assert name in listing


def test_amortised_gramian_method_records_its_update_every(tmp_path):
    suite = load_suite(write_suite(tmp_path, "[{name: upgrad}, {name: upgrad, label: upgrad-x2, update_every: 2}]"),
                       ["--suite.stl", "false", "--suite.seeds", "[0]"])
    run_suite(suite)
    found = records(tmp_path)
    assert found["tiny/synthetic_scenes/upgrad-x2/seed0"]["update_every"] == 2
    assert found["tiny/synthetic_scenes/upgrad/seed0"]["update_every"] == 1
    last = {k: found[f"tiny/synthetic_scenes/{k}/seed0"]["epochs"][-1]["test"] for k in ("upgrad", "upgrad-x2")}
    assert last["upgrad"] != last["upgrad-x2"]


def test_preset_is_resolved_and_recorded(tmp_path):
    suite = load_suite(write_suite(tmp_path, "[{name: mgda_ub, preset: libmtl}, {name: ew}]"),
                       ["--suite.stl", "false", "--suite.seeds", "[0]"])
    run_suite(suite)
    found = records(tmp_path)
    mgda = found["tiny/synthetic_scenes/mgda_ub/seed0"]
    assert mgda["preset"] == "libmtl" and mgda["method_hparams"]["grad_source"] == "rep_batchsum"
    assert found["tiny/synthetic_scenes/ew/seed0"]["preset"] is None
