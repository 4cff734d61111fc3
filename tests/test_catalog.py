"""The static name lists of ``benchmark/catalog.py`` agree with the real registries, and reading them imports
neither torch nor Lightning."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import catalog
from benchmark.methods.registry import _BUILTINS
from datamodules import DATAMODULES
from models import MODELS

ROOT = Path(__file__).resolve().parent.parent


def test_method_model_and_dataset_names_match_the_registries():
    assert set(catalog.METHODS) == set(_BUILTINS)
    assert set(catalog.MODELS) == set(MODELS)
    assert set(catalog.DATASETS) == set(DATAMODULES)
    assert all(summary.strip() for summary in [*catalog.METHODS.values(), *catalog.MODELS.values()])


@pytest.mark.parametrize("name", sorted(set(DATAMODULES) - {"celeba"}))
def test_dataset_tasks_and_defaults_match_the_datamodule(name):
    dm = DATAMODULES[name](batch_size=2, **catalog.DATASETS[name].params)
    assert catalog.dataset_tasks(name, {}) == tuple(t.name for t in dm.tasks if not t.auxiliary)
    assert catalog.DATASETS[name].model in MODELS


def test_celeba_tasks_come_from_the_data():
    from datamodules.celeba import NUM_ATTRIBUTES

    assert catalog.dataset_tasks("celeba", {}) is None and catalog.DATASETS["celeba"].task_count == NUM_ATTRIBUTES


def test_a_tasks_param_selects_tasks():
    assert catalog.dataset_tasks("nyud", {"tasks": ["depth", "semseg", "edge"]}) == ("semseg", "depth")


def test_suites_and_tables_are_listed_from_the_config_files():
    assert {"default", "zoo"} <= set(catalog.suites()) and catalog.suites()["default"].startswith("The default suite")
    assert "nashmtl-nyuv2" in catalog.tables() and "nashmtl_nyuv2_segnet" in catalog.tables()["nashmtl-nyuv2"]


def test_the_catalog_the_config_and_the_planner_import_no_torch():
    code = ("import sys, benchmark.catalog, benchmark.config, benchmark.grid, benchmark.quick_suite, benchmark.cli\n"
            "benchmark.grid.presets()\n"
            "heavy = sorted(m for m in ('torch', 'lightning', 'datamodules', 'models') if m in sys.modules)\n"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
