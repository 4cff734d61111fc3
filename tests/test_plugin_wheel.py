"""The plugin template as a user installs it: its wheel built from a copy, installed with pip outside the source
tree, then found by ``mtobench methods``, recorded in ``versions`` and trained for one epoch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.methods import registry as reg
from benchmark.records import package_versions

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "examples" / "plugin_template"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The template's wheel, installed with ``pip install --target`` into a folder outside the repository."""
    work = tmp_path_factory.mktemp("plugin")
    shutil.copytree(TEMPLATE, work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(work / "dist"),
                    str(work / "src")], check=True, capture_output=True)
    (wheel,) = (work / "dist").glob("mtobench_gls-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(work / "site"), str(wheel)],
                   check=True, capture_output=True)
    assert (work / "site" / "mtobench_gls" / "gls.py").is_file()
    return work / "site"


def mtobench(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_the_installed_wheel_is_listed_and_described(site, tmp_path):
    listed = mtobench(site, tmp_path, "methods")
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:1] == ["gls"] and "mtobench_gls.gls" in line for line in listed.stdout.splitlines())
    card = mtobench(site, tmp_path, "methods", "gls")
    assert card.returncode == 0, card.stderr
    assert "package mtobench-gls" in card.stdout and "hyper-parameters (default):" in card.stdout


def test_record_versions_include_the_plugin_package(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    reg.reload_plugins()
    try:
        assert package_versions()["mtobench-gls"] == "0.1.0"
    finally:
        reg.reload_plugins()


@pytest.mark.slow
def test_a_one_epoch_run_with_the_installed_wheel(site, tmp_path):
    params = "{height: 16, width: 24, n_train: 16, n_val: 8, n_test: 8, supersample: 1, generate_workers: 1}"
    result = mtobench(site, tmp_path, "run", "--method", "gls", "--dataset", "synthetic_scenes", "--epochs", "1",
                      "--no-wandb", f"--suite.dataset.params={params}", "--suite.stl=false",
                      "--suite.model.params={width: 4, levels: 2}")
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = (tmp_path / "runs").rglob("seed0.json")
    record = json.loads(path.read_text())
    assert record["method"] == "gls" and record["versions"]["mtobench-gls"] == "0.1.0"
    assert "package mtobench-gls" in record["method_origin"]
    assert "records:" in result.stdout and "leaderboard:" in result.stdout
