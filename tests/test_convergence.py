"""The leaderboard's convergence check: the last epoch's relative change of the validation loss."""

import math

import pytest

from benchmark.report.convergence import THRESHOLD, convergence, convergence_line, last_epoch_change


def record(run_id, losses, epochs=None):
    epochs = range(len(losses)) if epochs is None else epochs
    return {"run_id": run_id, "epochs": [{"epoch": e, "val_loss": v} for e, v in zip(epochs, losses, strict=True)]}


def test_last_epoch_change_is_the_relative_fall_of_the_last_two_consecutive_epochs():
    assert last_epoch_change(record("a", [4.0, 2.0, 1.6])) == pytest.approx(20.0)
    assert last_epoch_change(record("a", [2.0, 2.02])) == pytest.approx(-1.0)
    assert last_epoch_change(record("a", [2.0, 1.0], epochs=[7, 15])) is None
    assert last_epoch_change(record("a", [2.0])) is None
    assert math.isnan(last_epoch_change(record("a", [None, 1.0])))


def test_convergence_names_the_largest_change_by_magnitude_and_counts_the_runs_above_the_criterion():
    runs = [record("a", [1.0, 0.995]), record("b", [1.0, 1.03]), record("c", [1.0, 0.98]),
            record("d", [1.0, 0.9], epochs=[7, 15])]
    summary = convergence(runs)
    assert (summary.worst_run, summary.measured, summary.unmeasured, summary.above) == ("b", 3, 1, 2)
    assert summary.worst == pytest.approx(-3.0)
    line = convergence_line(summary)
    assert "-3.00% (`b`) over 3 runs; 2 above the criterion" in line and "1 runs not measured" in line
    assert f"under {THRESHOLD:g}%" in line


def test_a_nan_loss_is_the_worst_and_above_the_criterion():
    summary = convergence([record("a", [1.0, 0.999]), record("b", [1.0, float("nan")])])
    assert summary.worst_run == "b" and summary.above == 1


def test_no_consecutive_final_epochs_says_how_to_measure_it():
    assert convergence([record("a", [1.0, 0.5], epochs=[7, 15])]) is None
    assert "eval_final_epochs: 2" in convergence_line(None)
