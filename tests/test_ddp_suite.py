"""The suite's DDP and precision fields: validated with errors naming the field; a 2-process run writes one record."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.config import MethodConfig, SuiteConfig, TrainConfig, check_suite, load_suite
from benchmark.records import read_record

ROOT = Path(__file__).resolve().parents[1]
SUITE = """
name: ddp
dataset:
  name: synthetic_scenes
  params: {{height: 16, width: 24, n_train: 16, n_val: 8, n_test: 8, supersample: 1, generate_workers: 1,
            data_dir: {data}}}
model: {{name: segnet, params: {{width: 4, levels: 2}}}}
train: {{epochs: 1, batch_size: 4, jacobian_mode: loop, devices: 2, strategy: ddp}}
methods: [{{name: mgda_ub}}, {{name: ew}}]
stl: false
output_dir: {out}
leaderboard: {out}/leaderboard.md
"""


@pytest.mark.parametrize("field, value, message", [
    ("devices", 0, "train.devices=0 must be >= 1"),
    ("num_nodes", 0, "train.num_nodes=0 must be >= 1"),
    ("precision", "16-mixed", "train.precision='16-mixed' needs a GPU"),
    ("sync_batchnorm", True, "train.sync_batchnorm=True needs a GPU"),
])
def test_bad_ddp_and_precision_fields_are_named(field, value, message):
    suite = SuiteConfig(name="s", methods=[MethodConfig("ew")], train=TrainConfig(**{field: value}))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_suite(suite, "suite.yaml")


def test_ddp_fields_parse_and_bad_strategy_is_rejected(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(data=tmp_path / "data", out=tmp_path / "runs"))
    suite = load_suite(path, ["--suite.train.precision", "bf16-mixed", "--suite.train.num_nodes", "2"])
    assert (suite.train.devices, suite.train.num_nodes, suite.train.strategy) == (2, 2, "ddp")
    assert suite.train.precision == "bf16-mixed" and suite.train.sync_batchnorm is False
    with pytest.raises(ValueError, match="strategy"):
        load_suite(path, ["--suite.train.strategy", "fsdp"])


@pytest.mark.slow
def test_two_process_suite_run_writes_one_record_per_run_from_rank_zero(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(data=tmp_path / "data", out=tmp_path / "runs"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    script = Path(sys.executable).parent / "mtobench"
    done = subprocess.run([sys.executable, str(script), "run", str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = sorted((tmp_path / "runs").rglob("seed*.json"))
    assert len(found) == 2
    for record in map(read_record, found):
        assert record["world_size"] == 2 and record["amp_skipped_steps"] == 0
        assert record["timing"]["steps"] == 2  # 16 samples / (4 per process x 2 processes)
        assert record["epochs"][-1]["val"] and record["epochs"][-1]["val_loss"] > 0
    assert (tmp_path / "runs" / "leaderboard.md").exists()
