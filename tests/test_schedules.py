"""Optimizers and LR schedules from the suite's train section: the LR each epoch ran with is recorded."""

import pytest

from benchmark.optim import _PolyFactor, _StepFactor
from benchmark.records import read_record
from benchmark.runner import run_suite
from tests.test_runner import load_suite, write_suite


def test_step_factor_is_steplr_in_epochs():
    f = _StepFactor(per_epoch=3, step_size=2, gamma=0.5)
    assert [f(s) for s in range(0, 15, 3)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert f(5) == 1.0 and f(6) == 0.5


def test_shifted_step_factor_is_sener_koltun_rule():
    """``step_shifted``: x gamma at the start of every epoch e with (e + 1) % step_size == 0, as the MGDA-UB
    authors' trainer does (docs/protocols.md P7)."""
    f = _StepFactor(per_epoch=3, step_size=10, gamma=0.85, shift=1)
    expected = 1.0
    for epoch in range(100):
        if (epoch + 1) % 10 == 0:
            expected *= 0.85
        assert f(3 * epoch) == pytest.approx(expected) == f(3 * epoch + 2), epoch


def test_poly_factor_is_mtinet_poly():
    f = _PolyFactor(per_epoch=2, epochs=4)
    assert [f(s) for s in range(0, 8, 2)] == pytest.approx([1.0, 0.75**0.9, 0.5**0.9, 0.25**0.9])


@pytest.mark.parametrize(("schedule", "optimizer", "expected"), [
    ("step", "sgd", [1.0, 0.5, 0.25]),
    ("poly", "adam", [1.0, (2 / 3) ** 0.9, (1 / 3) ** 0.9]),
    ("constant", "adam", [1.0, 1.0, 1.0]),
])
def test_recorded_epoch_lr_follows_the_schedule(tmp_path, schedule, optimizer, expected):
    suite = load_suite(write_suite(tmp_path, "[{name: ew}]"), [
        "--suite.seeds=[0]", "--suite.stl=false", "--suite.train.epochs=3", "--suite.train.lr=0.01",
        f"--suite.train.lr_schedule={schedule}", "--suite.train.lr_step_size=1",
        f"--suite.train.optimizer={optimizer}"])
    [path] = run_suite(suite)
    lrs = [e["lr"] for e in read_record(path)["epochs"]]
    assert lrs == pytest.approx([0.01 * x for x in expected])


def test_bad_schedule_values_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="train.lr_gamma=1.5"):
        load_suite(write_suite(tmp_path), ["--suite.train.lr_gamma=1.5"])
    with pytest.raises(ValueError, match="lr_schedule"):
        load_suite(write_suite(tmp_path), ["--suite.train.lr_schedule=linear"])
