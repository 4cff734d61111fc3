"""Suite files: typed parsing, and errors that name the file, the field and the value."""

import pytest

from benchmark.config import load_suite
from benchmark.runner import check_methods, plan_runs
from datamodules.task_spec import TaskSpec

GOOD = """
name: tiny
dataset: {name: synthetic_scenes, params: {height: 16, width: 24}}
methods: [{name: ew}, {name: mgda, hparams: {normalization: l2}, label: mgda-l2}]
seeds: [0, 1]
"""


def write(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


TASKS = [TaskSpec("semseg", "segmentation", num_classes=4, ignore_index=-1), TaskSpec("depth", "depth"),
         TaskSpec("normals", "normals")]


def test_shipped_suites_parse_and_build():
    suite = load_suite("configs/suites/default.yaml")
    names = [m.name for m in suite.methods]
    assert names[:3] == ["ew", "mgda_ub", "cso"] and suite.methods[2].model == {"task_bn": True}
    assert {"pcgrad", "nash_mtl", "upgrad", "famo"} <= set(names)
    assert suite.stl and len(suite.seeds) >= 3
    control = [m for m in suite.methods if m.name == "ew" and m.model == {"task_bn": True}]
    assert len(control) == 1 and control[0].key == "ew-taskbn"  # CSO's per-task-BN model under EW (issue 12)
    check_methods(suite, TASKS)
    ablation = load_suite("configs/suites/cso_ablation.yaml")
    modes = [m.hparams.get("mode") for m in ablation.methods if m.name == "cso"]
    assert sorted(modes) == ["mixed", "phase1", "phase2", "sequential"] and len(ablation.seeds) == 2
    check_methods(ablation, TASKS)
    from benchmark.methods.registry import _BUILTINS

    zoo = load_suite("configs/suites/zoo.yaml")
    assert sorted(m.name for m in zoo.methods) == sorted(set(_BUILTINS) - {"fixed"})  # fixed: the sweep's method
    check_methods(zoo, TASKS)


def test_overrides_and_plan(tmp_path):
    suite = load_suite(write(tmp_path, GOOD), ["--suite.train.epochs", "2"])
    assert suite.train.epochs == 2
    runs = plan_runs(suite, ["semseg", "depth"])
    ids = [r.run_id for r in runs]
    assert len(ids) == len(set(ids)) == 2 * 2 + 2 * 2
    assert "tiny/synthetic_scenes/mgda-l2/seed1" in ids
    assert "tiny/synthetic_scenes/stl-depth/seed0" in ids
    fewer = plan_runs(load_suite(write(tmp_path, GOOD), ["--suite.stl_seeds", "[1]"]), ["semseg", "depth"])
    assert sorted(r.run_id for r in fewer if r.stl_task) == ["tiny/synthetic_scenes/stl-depth/seed1",
                                                             "tiny/synthetic_scenes/stl-semseg/seed1"]
    assert [r for r in fewer if not r.stl_task] == [r for r in runs if not r.stl_task]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (GOOD + "trian: {epochs: 2}\n", "trian"),
        (GOOD + "train: {epochs: two}\n", "two"),
        (GOOD + "train: {epochs: 0}\n", "train.epochs=0"),
        (GOOD + "train: {lr: -1.0}\n", "train.lr=-1.0"),
        (GOOD + "train: {jacobian_mode: fastest}\n", "fastest"),
        (GOOD + "selection: best-test\n", "selection='best-test'"),
        (GOOD.replace("seeds: [0, 1]", "seeds: [1, 1]"), "seeds=[1, 1]"),
        (GOOD + "stl_seeds: []\n", "stl_seeds=[]"),
        (GOOD + "train: {eval_every_n_epochs: 0}\n", "train.eval_every_n_epochs=0 must be >= 1"),
        (GOOD + "train: {eval_final_epochs: 0}\n", "train.eval_final_epochs=0 must be >= 1"),
        (GOOD + "train: {checkpoint_every_n_epochs: 0}\n", "train.checkpoint_every_n_epochs=0 must be >= 1"),
        (GOOD.replace("label: mgda-l2", "label: ew"), "duplicate"),
    ],
)
def test_bad_suites_name_the_field(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as err:
        load_suite(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_missing_suite_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_suite(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("methods", "needle"),
    [("[{name: mgdaub}]", "did you mean 'mgda_ub'"), ("[{name: mgda, hparams: {normalisation: l2}}]", "normalisation"),
     ("[{name: mgda, hparams: {normalization: l3}}]", "l3"),
     ("[{name: cso}]", "task_bn: true"), ("[{name: ew, model: {task_norm: true}}]", "task_norm"),
     ("[{name: ew, update_every: 2}]", "update_every=2"), ("[{name: upgrad, update_every: 0}]", "update_every=0")],
)
def test_bad_methods_fail_before_training(tmp_path, methods, needle):
    suite = load_suite(write(tmp_path, GOOD.replace(GOOD.splitlines()[3], f"methods: {methods}")))
    with pytest.raises(ValueError, match=needle):
        check_methods(suite, TASKS)
