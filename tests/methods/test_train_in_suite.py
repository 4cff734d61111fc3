"""Every built-in method trains end to end in a tiny suite (the runner, the module and the records)."""

from __future__ import annotations

import math
import warnings

import pytest

from benchmark.config import load_suite
from benchmark.methods import create
from benchmark.runner import run_suite
from tests.test_runner import records, write_suite

GRADIENT_METHODS = ("pcgrad", "cagrad", "upgrad")


MORE_METHODS = ("graddrop", "gradvac", "aligned_mtl", "gradnorm", "db_mtl")




KKT_TOL = 1e-8  # on max_t |w_t^(1/alpha) (M w)_t - 1|; the solver stops at a backward error of 1e-10


WEIGHTING_METHODS = ("si", "uw", "dwa", "rlw", "famo")


def test_the_three_methods_train_in_a_tiny_suite(tmp_path):
    suite = load_suite(write_suite(tmp_path, "[{name: pcgrad}, {name: cagrad}, {name: upgrad}]"),
                       ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.train.epochs", "1"])
    run_suite(suite)
    found = records(tmp_path)
    for name in GRADIENT_METHODS:
        rec = found[f"tiny/synthetic_scenes/{name}/seed0"]
        assert rec["status"] == "finished" and rec["epochs"][-1]["step"] == 2
        assert rec["method_hparams"] == create(name, 3).hparams()
        assert math.isfinite(rec["method_stats"]["weight_0"]["last"])


def test_the_five_methods_train_in_a_tiny_suite(tmp_path):
    methods = ("[{name: graddrop}, {name: gradvac}, {name: aligned_mtl}, "
               "{name: gradnorm, hparams: {initial_loss: first_step}}, {name: db_mtl}]")
    suite = load_suite(write_suite(tmp_path, methods),
                       ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.train.epochs", "1"])
    run_suite(suite)
    found = {r["method_label"]: r for r in records(tmp_path).values()}
    assert set(found) == set(MORE_METHODS)
    for name, rec in found.items():
        assert rec["status"] == "finished" and rec["epochs"][-1]["step"] == 2, name
        stats = rec["method_stats"]
        assert all(math.isfinite(v["last"]) for v in stats.values()), name
    gradnorm = found["gradnorm"]["method_stats"]
    weights = [gradnorm[f"weight_{i}"]["last"] for i in range(3)]
    assert sum(weights) == pytest.approx(3.0, rel=1e-6) and max(abs(w - 1) for w in weights) > 1e-6  # beta trained
    assert "sign_conflict_fraction" in found["graddrop"]["method_stats"]
    assert found["aligned_mtl"]["method_stats"]["rank"]["last"] >= 1


def test_both_methods_train_in_a_tiny_suite(tmp_path):
    suite = load_suite(write_suite(tmp_path, "[{name: nash_mtl}, {name: fairgrad, hparams: {alpha: 2.0}}]"),
                       ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.train.epochs", "1"])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*solver failure", category=RuntimeWarning)
        run_suite(suite)
    found = records(tmp_path)
    for name, hparams in (("nash_mtl", {}), ("fairgrad", {"alpha": 2.0})):
        rec = found[f"tiny/synthetic_scenes/{name}/seed0"]
        assert rec["status"] == "finished" and rec["epochs"][-1]["step"] == 2
        assert rec["method_hparams"] == create(name, 3, **hparams).hparams()
        stats = rec["method_stats"]
        assert stats["solver_failures"]["last"] == 0 and stats["solver_residual"]["last"] <= KKT_TOL
        assert all(stats[f"weight_{t}"]["last"] > 0 for t in range(3))


def test_all_five_train_in_the_real_module(tmp_path):
    overrides = ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.train.epochs"]
    methods = "[{name: si}, {name: uw}, {name: dwa}, {name: rlw}, {name: famo}]"
    run_suite(load_suite(write_suite(tmp_path, methods), [*overrides, "1"]))
    # DWA's rule starts in epoch 2: a second, 3-epoch run checks the on_train_epoch_end hook
    run_suite(load_suite(write_suite(tmp_path, "[{name: dwa, label: dwa-3}]"), [*overrides, "3"]))
    found = {r["method_label"]: r for r in records(tmp_path).values()}
    assert set(found) == {*WEIGHTING_METHODS, "dwa-3"}
    tasks = [t["name"] for t in found["si"]["tasks"]]
    for name, rec in found.items():
        stats = rec["method_stats"]
        assert rec["status"] == "finished" and rec["timing"]["steps"] == (6 if name == "dwa-3" else 2), name
        assert all(f"weight_{i}" in stats and f"weight_{t}" in stats for i, t in enumerate(tasks)), name
    last = {name: [rec["method_stats"][f"weight_{t}"]["last"] for t in tasks] for name, rec in found.items()}
    si = found["si"]["method_stats"]
    for t in tasks:
        assert si[f"weight_{t}"]["last"] * si[f"loss_{t}"]["last"] == pytest.approx(1.0, rel=1e-5)
    assert sum(last["rlw"]) == pytest.approx(1.0, rel=1e-5) and sum(last["famo"]) == pytest.approx(1.0, rel=1e-5)
    famo = found["famo"]["method_stats"]
    assert any(abs(famo[f"logit_{i}"]["last"]) > 1e-3 for i in range(len(tasks)))  # after_step ran
    uw = found["uw"]["method_stats"]
    assert found["uw"]["method_hparams"] == {"init": 0.0, "lr": 0.025}
    assert any(abs(uw[f"log_var_{i}"]["last"]) > 1e-3 for i in range(len(tasks)))  # s is trained
    # DWA: ones in epochs 0 and 1, the epoch-mean rule (sum T, not all ones) from epoch 2 (on_train_epoch_end)
    dwa_epochs = [e["method_stats"] for e in found["dwa-3"]["epochs"]]
    assert [[e[f"weight_{t}"] for t in tasks] for e in dwa_epochs[:2]] == [[1.0] * len(tasks)] * 2
    third = [dwa_epochs[2][f"weight_{t}"] for t in tasks]
    assert sum(third) == pytest.approx(len(tasks), rel=1e-5) and max(abs(w - 1) for w in third) > 1e-4

