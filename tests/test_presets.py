"""Reproduction presets (docs/methods.md §0): every entry builds, explicit hparams win, suites inherit."""

import pytest

from benchmark.config import load_suite
from benchmark.methods import available, create
from benchmark.methods.presets import PRESETS, resolve
from benchmark.runner import check_methods, plan_runs, resolved_hparams
from datamodules.task_spec import TaskSpec

TASKS = [TaskSpec("semseg", "segmentation", num_classes=4, ignore_index=-1), TaskSpec("depth", "depth"),
         TaskSpec("normals", "normals")]
ENTRIES = [(preset, method) for preset, table in PRESETS.items() for method in table]


def test_the_four_presets():
    assert sorted(PRESETS) == ["cagrad", "libmtl", "nashmtl", "official"]


@pytest.mark.parametrize(("preset", "method"), ENTRIES)
def test_every_entry_builds_and_is_recorded(preset, method):
    assert method in available()
    hparams = PRESETS[preset][method]
    recorded = create(method, 3, **hparams).hparams()  # a misspelled argument raises TypeError here
    assert {k: recorded[k] for k in hparams} == hparams


@pytest.mark.parametrize(
    ("preset", "method", "attr", "value"),
    [
        ("nashmtl", "mgda", "head_weighting", "weighted"),
        ("nashmtl", "dwa", "mode", "window"),
        ("libmtl", "mgda_ub", "grad_source", "rep_batchsum"),
        ("libmtl", "cagrad", "c", 0.5),
        ("libmtl", "uw", "init", -0.5),
        ("cagrad", "uw", "init", -0.5),
        ("official", "mgda_ub", "head_weighting", "weighted"),
        ("official", "famo", "after_step_updates_bn", True),
    ],
)
def test_spot_checks(preset, method, attr, value):
    assert getattr(create(method, 3, **resolve(preset, method, {})), attr) == value


def test_explicit_hparams_win_and_unlisted_methods_are_unchanged():
    assert resolve("libmtl", "cagrad", {"c": 0.3}) == {"c": 0.3, "update_scale": "mean"}
    assert create("cagrad", 3, **resolve("libmtl", "cagrad", {"c": 0.3})).c == 0.3
    assert resolve("libmtl", "pcgrad", {"eps": 1e-6}) == {"eps": 1e-6}
    assert resolve(None, "mgda", {"normalization": "l2"}) == {"normalization": "l2"}
    explicit = {"c": 0.3}
    resolve("libmtl", "cagrad", explicit)
    assert explicit == {"c": 0.3}  # not mutated


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"'libmlt'.*cagrad.*libmtl.*nashmtl.*official"):
        resolve("libmlt", "mgda", {})


SUITE = """
name: presets
dataset: {name: synthetic_scenes, params: {height: 16, width: 24}}
preset: libmtl
methods:
  - {name: mgda_ub}
  - {name: mgda_ub, label: mgda-ub-official, preset: official}
  - {name: cagrad, hparams: {c: 0.3}}
  - {name: pcgrad}
seeds: [0]
stl: true
"""


def test_suite_preset_is_inherited_and_method_preset_wins(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    suite = load_suite(path)
    assert suite.preset == "libmtl" and suite.methods[1].preset == "official"
    assert resolved_hparams(suite, suite.methods[0]) == {"grad_source": "rep_batchsum"}
    check_methods(suite, TASKS)
    runs = {r.run_id.split("/")[-2]: r for r in plan_runs(suite, ["semseg", "depth"])}
    assert runs["mgda_ub"].preset == "libmtl" and runs["mgda_ub"].hparams == {"grad_source": "rep_batchsum"}
    official = runs["mgda-ub-official"]
    assert official.preset == "official"
    assert official.hparams == {"head_weighting": "weighted", "normalization": "loss+"}
    assert runs["cagrad"].hparams == {"c": 0.3, "update_scale": "mean"}
    assert runs["pcgrad"].hparams == {} and runs["pcgrad"].preset == "libmtl"
    assert runs["stl-depth"].preset is None and runs["stl-depth"].hparams == {}


def test_unknown_preset_in_a_suite_fails_before_training(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.replace("preset: official", "preset: offical"))
    suite = load_suite(path)
    with pytest.raises(ValueError, match="mgda-ub-official.*'offical'"):
        check_methods(suite, TASKS)
