"""Fault injection through the CLI: each test runs ``mtobench`` in a subprocess, as a user would, on a tiny suite
(8x8 images, one epoch), injects one fault and asserts a clear error or a correct recovery, and that no record
was lost or wrong. The list of fault kinds and their expected behaviour is in README.md ("Reliability"). The
tests with three or more CLI calls are marked ``slow``."""

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RUN = "fi/synthetic_scenes/{label}/seed{seed}"
SUITE = """
name: fi
dataset:
  name: synthetic_scenes
  params: {{height: 8, width: 8, n_train: {n_train}, n_val: 4, n_test: 4, supersample: 1, generate_workers: 1,
            data_dir: {data}}}
model: {{name: segnet, params: {{width: 2, levels: 1}}}}
train: {{epochs: {epochs}, batch_size: 4, jacobian_mode: loop, checkpoint_every_n_batches: {every}}}
methods: {methods}
seeds: {seeds}
stl: false
output_dir: {out}
leaderboard: {board}
logging: {{wandb: "off", log_every_n_steps: 1}}
"""
RAISING = textwrap.dedent('''
    import torch
    from benchmark.methods import Method, Needs


    class Raises(Method):
        """A Gramian method whose weights raise (a plugin bug)."""

        needs = Needs.GRAMIAN

        def __init__(self, num_tasks: int) -> None:
            super().__init__(num_tasks)

        def gramian_weights(self, gramian, losses):
            raise RuntimeError("plugin bug in gramian_weights")

        def hparams(self):
            return {}


    class Halves(Method):
        """Every loss weighted 0.5."""

        needs = Needs.LOSSES

        def __init__(self, num_tasks: int) -> None:
            super().__init__(num_tasks)

        def loss_weights(self, losses):
            return torch.full_like(losses, 0.5)

        def hparams(self):
            return {}
''')


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def suite(tmp_path: Path, data: Path, methods: str = "[{name: ew}]", seeds: str = "[0]", epochs: int = 1,
          every: int = 0, n_train: int = 8, out: Path | None = None, board: Path | None = None) -> Path:
    out = out or tmp_path / "runs"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(data=data, out=out, board=board or out / "leaderboard.md", methods=methods,
                                 seeds=seeds, epochs=epochs, every=every, n_train=n_train))
    return path


def cli_env(site: Path | None = None, **extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONHASHSEED": "0", "COLUMNS": "400",
           "PYTHONPATH": os.pathsep.join(str(p) for p in (ROOT, site) if p is not None), **extra}
    if "MTOBENCH_KILL_AT_BATCH" not in extra:
        env.pop("MTOBENCH_KILL_AT_BATCH", None)
    return env


def cli_code(args, prelude: str = "") -> str:
    return f"{prelude}\nimport sys\nfrom benchmark.cli import main\nsys.exit(main({[str(a) for a in args]!r}))"


def cli(*args, prelude: str = "", site: Path | None = None, umask: int | None = None,
        **env: str) -> subprocess.CompletedProcess:
    """``mtobench ARGS`` in a fresh interpreter (``site`` on its path, ``env`` added); ``prelude`` runs first, to
    inject the fault."""
    return subprocess.run([sys.executable, "-c", cli_code(args, prelude)], cwd=ROOT, env=cli_env(site, **env),
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def output(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stdout + proc.stderr).split())


def record(out: Path, label: str = "ew", seed: int = 0) -> dict:
    return json.loads((out / f"{RUN.format(label=label, seed=seed)}.json").read_text())


def records(out: Path) -> dict[str, dict]:
    return {p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in sorted(out.rglob("seed*.json"))}


def install_plugin(tmp_path: Path, entries: dict[str, str]) -> Path:
    """A fake installed distribution ``fi-plugins`` declaring ``entries`` in the ``mtobench.methods`` group."""
    root = tmp_path / "site"
    info = root / "fi_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fi-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mtobench.methods]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    (root / "fi_plugin.py").write_text(RAISING)
    return root


# --- status is earned ----------------------------------------------------------------------------------------------


def test_diverged_run_is_not_scored_and_the_leaderboard_still_builds(tmp_path, data):
    """lr=1e30 with nan_policy skip: the steps are skipped under max_nan_skips, the weights blow up; the run is
    ``diverged`` (reason, skip count), listed as not scored, and the other method keeps its row."""
    path = suite(tmp_path, data, "[{name: ew}, {name: uw}]")
    proc = cli("run", str(path), "--suite.train.lr=1e30", "--suite.train.nan_policy=skip",
               "--suite.train.max_nan_skips=10")
    assert proc.returncode == 0, output(proc)
    out = tmp_path / "runs"
    for label in ("ew", "uw"):
        rec = record(out, label)
        assert rec["status"] == "diverged" and "skipped steps" in rec["status_reason"], rec["status_reason"]
    board = (out / "leaderboard.md").read_text()
    assert "> Not scored: `fi/synthetic_scenes/ew/seed0` (diverged)" in board
    assert "| ew |" not in board and "is missing seed(s) 0 (diverged)" in board


def test_nan_policy_error_gives_a_diverged_record_not_a_crash(tmp_path, data):
    proc = cli("run", str(suite(tmp_path, data)), "--suite.train.lr=1e30")
    assert proc.returncode == 0, output(proc)
    rec = record(tmp_path / "runs")
    assert rec["status"] == "diverged" and rec["error"]["type"] == "FloatingPointError"
    assert "Not scored" in (tmp_path / "runs" / "leaderboard.md").read_text()


def test_a_diverged_seed_leaves_the_row_finite_and_is_warned(tmp_path, data):
    """One seed finished, one seed's record claims ``finished`` with null metrics (an old record): the row is the
    finished seed's, never NaN, with a warning."""
    path = suite(tmp_path, data, seeds="[0, 1]")
    assert cli("run", str(path)).returncode == 0
    out = tmp_path / "runs"
    bad = out / f"{RUN.format(label='ew', seed=1)}.json"
    rec = json.loads(bad.read_text())
    for entry in rec["epochs"]:
        entry["test"] = dict.fromkeys(entry["test"])
    bad.write_text(json.dumps(rec))
    proc = cli("leaderboard", str(out), "--out", str(tmp_path / "board.md"))
    assert proc.returncode == 0, output(proc)
    board = (tmp_path / "board.md").read_text()
    assert "`fi/synthetic_scenes/ew/seed1` (finished): non-finite selected test metric(s)" in board
    row = next(line for line in board.splitlines() if line.startswith("| ew |"))
    assert row.startswith("| ew | 1 |") and "nan" not in row.lower()


@pytest.mark.parametrize(("override", "message"), [
    ("--suite.train.max_nan_skips=-1", "train.max_nan_skips=-1 must be >= 0"),
    ("--suite.train.lr=1e400", "train.lr=inf must be finite and > 0"),
    ("--suite.train.lr=-0.1", "train.lr=-0.1 must be finite and > 0"),
])
def test_bad_config_values_are_refused_with_the_field_named(tmp_path, data, override, message):
    proc = cli("run", str(suite(tmp_path, data)), override)
    assert proc.returncode == 2 and message in output(proc)  # a usage error
    assert not (tmp_path / "runs").exists()


# --- records are keyed on what made them --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_changed_config_is_refused_naming_the_fields_and_force_retrains(tmp_path, data):
    path = suite(tmp_path, data)
    assert cli("run", str(path)).returncode == 0
    out = tmp_path / "runs"
    before = record(out)
    proc = cli("run", str(path), "--suite.train.lr=0.01", "--suite.train.epochs=2")
    text = output(proc)
    assert proc.returncode == 1 and "train.epochs: 1 -> 2" in text and "train.lr: 0.001 -> 0.01" in text
    assert "--force" in text and record(out) == before
    proc = cli("run", str(path), "--suite.train.lr=0.01", "--suite.train.epochs=2", "--force")
    assert proc.returncode == 0, output(proc)
    after = record(out)
    assert after["config"]["train"]["lr"] == 0.01 and len(after["epochs"]) == 2
    assert after["fingerprint"] != before["fingerprint"]
    moved = tmp_path / "moved"
    out.rename(moved)  # the output folder is no setting: the records there are done
    proc = cli("run", str(path), "--suite.train.lr=0.01", "--suite.train.epochs=2", "--suite.output_dir", moved,
               "--suite.leaderboard", moved / "board.md")
    assert proc.returncode == 0 and "1 of 1 runs already have records" in output(proc)
    assert record(moved) == after


def test_a_truncated_record_is_named_and_retrained(tmp_path, data):
    path = suite(tmp_path, data)
    assert cli("run", str(path)).returncode == 0
    target = tmp_path / "runs" / f"{RUN.format(label='ew', seed=0)}.json"
    good = json.loads(target.read_text())
    target.write_text(target.read_text()[:200])
    proc = cli("run", str(path))
    assert proc.returncode == 0 and f"record {target}: cannot be read as JSON" in output(proc)
    again = json.loads(target.read_text())
    assert again["status"] == "finished" and again["epochs"] == good["epochs"]


def test_rows_trained_with_other_settings_are_warned_in_the_table(tmp_path, data):
    path = suite(tmp_path, data)
    assert cli("run", str(path)).returncode == 0
    proc = cli("run", str(path), "--suite.methods=[{name: uw}]", "--suite.train.lr=0.01")
    assert proc.returncode == 0, output(proc)
    board = (tmp_path / "runs" / "leaderboard.md").read_text()
    assert "trained with different settings: `train.lr` (0.001: fi/synthetic_scenes/ew/seed0; 0.01:" in board


# --- resume ----------------------------------------------------------------------------------------------------------


def _comparable(rec: dict) -> dict:
    """A record without timings, resume counters, dates and paths."""
    drop = {"timing", "resumes", "created", "config", "git_dirty"}
    rec = {k: v for k, v in rec.items() if k not in drop}
    rec["logging"] = {k: v for k, v in rec["logging"].items() if k != "delta_m_baseline"}  # names the folder
    rec["step_log"]["points"] = [{k: v for k, v in p.items() if not k.endswith("time")}
                                 for p in rec["step_log"]["points"]]
    rec["logging"]["grad_stats"] = {k: v for k, v in rec["logging"]["grad_stats"].items() if "seconds" not in k}
    return rec


@pytest.mark.slow
def test_kill_9_mid_epoch_resumes_to_the_whole_same_record(tmp_path, data):
    """SIGKILL after batch 3 of 2 x 3: the resumed record equals an uninterrupted one field by field (step log,
    method stats, history), except timings and resume counters."""
    methods = "[{name: famo}]"
    reference = suite(tmp_path / "a", data, methods, epochs=2, every=2, n_train=12)
    assert cli("run", str(reference)).returncode == 0
    path = suite(tmp_path, data, methods, epochs=2, every=2, n_train=12)
    killed = cli("run", str(path), MTOBENCH_KILL_AT_BATCH="5")
    assert killed.returncode == -9, output(killed)
    assert len(list((tmp_path / "runs").rglob("*.ckpt"))) == 1
    proc = cli("run", str(path))
    assert proc.returncode == 0, output(proc)
    got, want = record(tmp_path / "runs", "famo"), record(tmp_path / "a" / "runs", "famo")
    assert got["resumes"] and not want["resumes"] and len(got["step_log"]["points"]) == 6
    assert _comparable(got) == _comparable(want)
    assert got["timing"]["steps"] == want["timing"]["steps"]
    assert not list((tmp_path / "runs").rglob("*.ckpt")) and not list((tmp_path / "runs").rglob("*.tmp"))


def test_a_pickle_payload_checkpoint_is_refused_and_not_offered_for_resume(tmp_path, data):
    path = suite(tmp_path, data)
    ckpt = tmp_path / "runs" / f"{RUN.format(label='ew', seed=0)}.ckpt"
    ckpt.parent.mkdir(parents=True)

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"x": Payload()}, ckpt)
    proc = cli("run", str(path))
    text = output(proc)
    assert proc.returncode == 1 and f"checkpoint {ckpt} cannot be loaded safely" in text
    assert "rerun to resume" not in text and not (tmp_path / "pwned").exists()
    assert record(tmp_path / "runs")["status"] == "failed"


@pytest.mark.slow
def test_a_checkpoint_of_another_configuration_is_refused(tmp_path, data):
    path = suite(tmp_path, data, epochs=2, every=1)
    assert cli("run", str(path), MTOBENCH_KILL_AT_BATCH="1").returncode == -9
    proc = cli("run", str(path), "--suite.train.lr=0.01")
    text = output(proc)
    assert proc.returncode == 1 and "belongs to another configuration" in text and "rerun to resume" not in text
    proc = cli("run", str(path))
    assert proc.returncode == 0 and record(tmp_path / "runs")["resumes"], output(proc)


# --- effective setup -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fp16_on_a_cpu_machine_is_refused_not_silently_bf16(tmp_path, data):
    proc = cli("run", str(suite(tmp_path, data)), "--suite.train.accelerator=auto", "--suite.train.precision=16-mixed")
    assert proc.returncode == 1 and "Lightning would train in bf16-mixed" in output(proc)
    assert not list(tmp_path.rglob("seed*.json"))


def test_the_record_states_what_lightning_ran(tmp_path, data):
    proc = cli("run", str(suite(tmp_path, data)), "--suite.train.accelerator=auto")
    assert proc.returncode == 0, output(proc)
    effective = record(tmp_path / "runs")["effective"]
    assert effective == {"precision": "32-true", "accelerator": "cuda" if torch.cuda.is_available() else "cpu",
                         "devices": 1, "num_nodes": 1, "strategy": "SingleDeviceStrategy",
                         "cpu_threads": torch.get_num_threads()}


# --- one writer per run --------------------------------------------------------------------------------------------

COUNT_TRAININGS = """
import benchmark.runner.suite as S
_train = S.train_and_write
def counted(suite, run, *args, **kwargs):
    with open({log!r}, "a") as f:
        f.write(run.run_id + "\\n")
    return _train(suite, run, *args, **kwargs)
S.train_and_write = counted
"""


@pytest.mark.slow
def test_two_concurrent_runs_of_one_suite_train_each_run_exactly_once(tmp_path, data):
    path = suite(tmp_path, data, "[{name: ew}, {name: uw}, {name: rlw}]", seeds="[0, 1]")
    warm = cli("run", path, "--suite.methods=[{name: ew}]", "--suite.seeds=[0]", "--suite.output_dir",
               tmp_path / "warm", "--suite.leaderboard", tmp_path / "warm" / "board.md")
    assert warm.returncode == 0, output(warm)  # the data exist before the two processes start
    log = tmp_path / "trained.txt"
    code = cli_code(["run", path], COUNT_TRAININGS.format(log=str(log)))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trained = log.read_text().split()
    assert sorted(trained) == sorted(set(trained)) and len(trained) == 6, trained
    found = records(tmp_path / "runs")
    assert len(found) == 6 and all(r["status"] == "finished" and r["resumes"] == [] for r in found.values())


# --- failures stay local -------------------------------------------------------------------------------------------


def test_a_raising_plugin_is_recorded_as_failed_and_the_suite_goes_on(tmp_path, data):
    site = install_plugin(tmp_path, {"fi_raises": "fi_plugin:Raises"})
    path = suite(tmp_path, data, "[{name: fi_raises}, {name: ew}]")
    proc = cli("run", str(path), site=site)
    text = output(proc)
    assert proc.returncode == 1 and "1 of 2 runs failed" in text and "fi/synthetic_scenes/fi_raises/seed0" in text
    out = tmp_path / "runs"
    failed = record(out, "fi_raises")
    assert failed["status"] == "failed" and failed["error"]["type"] == "RuntimeError"
    assert "plugin bug in gramian_weights" in Path(failed["error"]["log"]).read_text()
    assert record(out, "ew")["status"] == "finished"
    board = (out / "leaderboard.md").read_text()
    assert "| ew |" in board and "`fi/synthetic_scenes/fi_raises/seed0` (failed): RuntimeError" in board


def test_a_failed_run_is_retried_on_the_next_run(tmp_path, data):
    site = install_plugin(tmp_path, {"fi_flaky": "fi_plugin:Raises"})
    path = suite(tmp_path, data, "[{name: fi_flaky}]")
    assert cli("run", str(path), site=site).returncode == 1
    (site / "fi_plugin.py").write_text(RAISING.replace('raise RuntimeError("plugin bug in gramian_weights")',
                                                       "return torch.ones(gramian.shape[0], dtype=gramian.dtype)"))
    proc = cli("run", str(path), site=site)
    assert proc.returncode == 0, output(proc)
    out = tmp_path / "runs"
    assert record(out, "fi_flaky")["status"] == "finished"
    assert not list(out.rglob("*.failed.log"))


def test_a_plugin_clashing_with_a_builtin_is_refused_by_run(tmp_path, data):
    site = install_plugin(tmp_path, {"ew": "fi_plugin:Halves"})
    proc = cli("run", str(suite(tmp_path, data)), site=site)
    text = output(proc)
    assert proc.returncode == 1 and "entry point 'ew' (fi_plugin:Halves) of package fi-plugins" in text
    assert "built-in: benchmark.methods.ew" in text and not list(tmp_path.rglob("seed*.json"))


# --- writes ----------------------------------------------------------------------------------------------------------


def test_an_unwritable_run_folder_fails_before_any_training(tmp_path, data):
    out = tmp_path / "runs"
    (out / "fi" / "synthetic_scenes").mkdir(parents=True)
    (out / "fi" / "synthetic_scenes" / "uw").write_text("a file where the run folder should be")
    proc = cli("run", str(suite(tmp_path, data, "[{name: ew}, {name: uw}]")))
    assert proc.returncode == 1 and f"{out}/fi/synthetic_scenes/uw" in output(proc) and "not writable" in output(proc)
    assert not list(out.rglob("seed*.json"))


def test_an_unwritable_leaderboard_folder_fails_before_any_training(tmp_path, data):
    (tmp_path / "blocker").write_text("not a folder")
    proc = cli("run", str(suite(tmp_path, data, board=tmp_path / "blocker" / "board.md")))
    assert proc.returncode == 1 and "(leaderboard) is not writable" in output(proc)
    assert not list(tmp_path.rglob("seed*.json"))


SILENT_SAVE = """
import lightning.pytorch as pl
pl.Trainer.save_checkpoint = lambda self, filepath, weights_only=None, storage_options=None: None
"""


def test_a_checkpoint_save_that_writes_nothing_is_named(tmp_path, data):
    """Lightning's atomic save swallowing a failure: the missing temp file is named, not an ENOENT later."""
    proc = cli("run", str(suite(tmp_path, data)), prelude=SILENT_SAVE)
    text = output(proc)
    assert proc.returncode == 1 and "could not be saved: the temp file" in text and ".seed0.ckpt." in text
    assert record(tmp_path / "runs")["status"] == "failed"


def test_orphan_temp_files_of_dead_writers_are_removed(tmp_path, data):
    path = suite(tmp_path, data)
    folder = tmp_path / "runs" / "fi" / "synthetic_scenes" / "ew"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    orphans = [folder / f".seed0.ckpt.{pid}.tmp", folder / f".seed0.json.{pid}.x1y2.tmp"]
    live = folder / f".seed0.json.{os.getpid()}.abcd.tmp"
    for p in [*orphans, live]:
        p.write_text("half")
    proc = cli("run", str(path))
    assert proc.returncode == 0, output(proc)
    assert not any(p.exists() for p in orphans) and live.exists()
    assert record(tmp_path / "runs")["status"] == "finished"


def test_records_are_written_with_the_umask_mode(tmp_path, data):
    proc = cli("run", str(suite(tmp_path, data)), umask=0o027)
    assert proc.returncode == 0, output(proc)
    mode = stat.S_IMODE((tmp_path / "runs" / f"{RUN.format(label='ew', seed=0)}.json").stat().st_mode)
    assert mode == 0o640


DISK_FULL = """
import errno
import benchmark.runner.train as T
def full(path, payload):
    raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")
T.write_json_atomic = full
"""


def test_a_full_disk_is_named_and_the_rerun_resumes(tmp_path, data):
    path = suite(tmp_path, data)
    proc = cli("run", str(path), prelude=DISK_FULL)
    text = output(proc)
    assert proc.returncode == 1 and "No space left on device" in text and "rerun to resume from" in text
    assert not list(tmp_path.rglob("seed*.json"))
    proc = cli("run", str(path))
    assert proc.returncode == 0, output(proc)
    rec = record(tmp_path / "runs")
    assert rec["status"] == "finished" and rec["resumes"]


@pytest.mark.slow
def test_a_corrupt_data_cache_is_named_and_regenerated(tmp_path):
    data = tmp_path / "data"
    path = suite(tmp_path, data)
    assert cli("run", str(path)).returncode == 0
    (train,) = data.rglob("train.npz")
    train.write_bytes(train.read_bytes()[:100])
    proc = cli("run", str(path), "--force")
    assert proc.returncode == 0 and f"generating {train} (checksum mismatch, file corrupt)" in output(proc)
    assert record(tmp_path / "runs")["status"] == "finished"
