"""The fixed-weight linear-scalarization sweep: grid, fixed-weight method, front and dominance, leaderboard."""

import math
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.methods import create
from benchmark.report.markdown import build_leaderboard
from benchmark.report.summary import summarize
from benchmark.runner import plan_runs
from benchmark.sweep import dominates, front, simplex_grid, sweep_label, task_scores
from tests.test_leaderboard import make_record as leaderboard_record
from tests.test_leaderboard import make_records
from tests.test_runner import records, write_suite


def test_simplex_grid_by_hand():
    assert simplex_grid(2, 3) == [(2.0, 0.0), (1.0, 1.0), (0.0, 2.0)]
    grid = simplex_grid(3, 3)
    assert grid == [(3.0, 0.0, 0.0), (1.5, 1.5, 0.0), (1.5, 0.0, 1.5), (0.0, 3.0, 0.0), (0.0, 1.5, 1.5),
                    (0.0, 0.0, 3.0)]
    assert len(simplex_grid(3, 5)) == math.comb(5 + 3 - 2, 3 - 1) and (1.0, 1.0, 1.0) in simplex_grid(3, 4)
    assert all(abs(sum(w) - 4) < 1e-12 and min(w) >= 0 for w in simplex_grid(4, 4))
    with pytest.raises(ValueError, match="points >= 2"):
        simplex_grid(3, 1)


def test_fixed_weights_method():
    method = create("fixed", 3, weights=[2.0, 0.5, 0.5])
    torch.testing.assert_close(method.loss_weights(torch.tensor([1.0, 5.0, 9.0])), torch.tensor([2.0, 0.5, 0.5]))
    jac = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    torch.testing.assert_close(method.aggregate(jac), torch.tensor([4.0, 3.0]))
    torch.testing.assert_close(create("fixed", 3).aggregate(jac), create("ew", 3).aggregate(jac))
    for bad in ([1.0, 1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, float("nan"), 1.0]):
        with pytest.raises(ValueError, match="FixedWeights: weights="):
            create("fixed", 3, weights=bad)


def test_dominance_and_front_by_hand():
    assert dominates({"a": 1, "b": 1}, {"a": 1, "b": 0}) and not dominates({"a": 1, "b": 1}, {"a": 1, "b": 1})
    assert not dominates({"a": 2, "b": 0}, {"a": 1, "b": 1})
    points = {"p": {"a": 1, "b": 1}, "q": {"a": 2, "b": 0}, "r": {"a": 0.5, "b": 0.5}, "s": {"a": 1, "b": 1}}
    assert front(points) == ["p", "q", "s"]
    scores = task_scores({"x/m": 44.0, "y/e": 0.45, "y/f": 2.2}, {"x/m": 40.0, "y/e": 0.5, "y/f": 2.0},
                         {"x/m": "higher", "y/e": "lower", "y/f": "lower"}, {"x/m": "x", "y/e": "y", "y/f": "y"})
    assert scores == pytest.approx({"x": 10.0, "y": (10.0 - 10.0) / 2})


SWEEP = {  # per-task scores vs STL (41, 0.60, 25): A (2.44, 3.33, 0), B (-4.88, 16.67, -4), C (-2.44, -3.33, -6)
    (2.0, 0.5, 0.5): {"semseg/miou": 42.0, "depth/abs_err": 0.58, "normal/mean": 25.0},
    (0.5, 2.0, 0.5): {"semseg/miou": 39.0, "depth/abs_err": 0.50, "normal/mean": 26.0},
    (0.5, 0.5, 2.0): {"semseg/miou": 40.0, "depth/abs_err": 0.62, "normal/mean": 26.5},
}


def sweep_records():
    out = []
    for weights, final in SWEEP.items():
        record = leaderboard_record("ew", 0, final)
        label = sweep_label(weights)
        record.update(method="fixed", method_label=label, run_id=f"default/toy/{label}/seed0", sweep=True,
                      method_hparams={"weights": list(weights)})
        out.append(record)
    return out


def test_front_and_dominated_methods_from_records():
    """ew (-6.10, -1.67, -6.0) is dominated by A and B; pcgrad (0, 4.17, -1) and mgda_ub (6.10, 10.83, 5) are
    not; C is dominated by A, so the front is A and B."""
    (summary,) = summarize([*make_records(), *sweep_records()])
    a, b, c = map(sweep_label, SWEEP)
    assert [r.label for r in summary.rows] == ["mgda_ub", "pcgrad", "ew"]
    assert {r.label for r in summary.sweep_rows} == {a, b, c}
    assert set(summary.front) == {a, b}
    assert summary.front[a] == pytest.approx({"semseg": 100 / 41, "depth": 100 * 0.02 / 0.6, "normal": 0.0})
    assert {k: set(v) for k, v in summary.dominated_by.items()} == {"ew": {a, b}, "pcgrad": set(), "mgda_ub": set()}
    board = build_leaderboard([*make_records(), *sweep_records()])
    assert "Linear-scalarization sweep" in board and f"| ew | yes: {b}, {a} |" in board and "| pcgrad | no |" in board
    assert f"| {c} | 1 |" in board and board.count("| yes |") == 2


def test_without_stl_the_front_is_not_drawn():
    (summary,) = summarize([*make_records(stl_tasks=("semseg",)), *sweep_records()])
    assert summary.front == {} and any("front needs a complete STL baseline" in n for n in summary.notes)


def test_sweep_runs_are_planned_and_trained(tmp_path: Path):
    suite_file = write_suite(tmp_path, "[{name: ew}]")
    overrides = ["--suite.seeds", "[0]", "--suite.train.epochs", "1", "--suite.sweep", "{points: 2}"]
    runs = plan_runs(load_suite(suite_file, overrides), ["semseg", "depth", "normal"])
    sweep = [r for r in runs if r.sweep]
    assert [r.hparams["weights"] for r in sweep] == [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]]
    assert sweep[0].run_id == "tiny/synthetic_scenes/sweep-3.00-0.00-0.00/seed0" and sweep[0].method == "fixed"
    assert main(["run", str(suite_file), *overrides]) == 0
    found = records(tmp_path)
    assert found["tiny/synthetic_scenes/sweep-0.00-3.00-0.00/seed0"]["sweep"] is True
    assert found["tiny/synthetic_scenes/ew/seed0"]["sweep"] is False
    board = (tmp_path / "runs" / "leaderboard.md").read_text()
    assert "Linear-scalarization sweep" in board and "3 weight vectors" in board
    assert all(f"| sweep-{w} | 1 |" in board for w in ("3.00-0.00-0.00", "0.00-3.00-0.00", "0.00-0.00-3.00"))
    assert "| ew | 1 |" in board and "| sweep-" not in board.split("Linear-scalarization sweep")[0]
    aux = plan_runs(load_suite(suite_file, overrides), ["semseg", "depth"], ["semseg", "edge", "depth"])
    assert [r.hparams["weights"] for r in aux if r.sweep] == [[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]
    with pytest.raises(ValueError, match="sweep.points=1"):
        load_suite(suite_file, ["--suite.sweep", "{points: 1}"])
