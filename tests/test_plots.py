"""The local figures: drawn from records, linked from leaderboard.md, and plotting the numbers the records hold."""

from __future__ import annotations

import math

import pytest

import benchmark.report.figures as figures
from benchmark.report.markdown import write_leaderboard
from benchmark.report.summary import summarize
from tests.test_leaderboard import MTL, STL, TASKS, _write, make_records

COS = {"ew": {"semseg/depth": -0.2, "semseg/normal": 0.1, "depth/normal": 0.4},
       "pcgrad": {"semseg/depth": 0.0, "semseg/normal": 0.3, "depth/normal": -0.6},
       "mgda_ub": {"semseg/depth": 0.5, "semseg/normal": -0.1, "depth/normal": 0.2}}


def logged_records():
    """The leaderboard's synthetic records plus what a run logs: weights per step and mean gradient cosines
    (seed 1's cosines are seed 0's plus 0.1)."""
    records = make_records()
    for r in records:
        if r["kind"] != "mtl":
            continue
        shift = 0.1 * r["seed"]
        r["method_stats"] = {f"grad_cos/{pair}": {"mean": c + shift, "last": c} for pair, c in COS[r["method"]].items()}
        r["step_log"] = {"every": 2, "stride": 1, "logged_steps": 3, "points": [
            {"batch": b, "epoch": 0, **{f"weight_{t}": 1.0 + b + i + r["seed"] for i, t in enumerate(TASKS)}}
            for b in (0, 2, 4)]}
        for e, entry in enumerate(r["epochs"]):
            entry["method_stats"] = {f"loss_{t}": 1.0 + e for t in TASKS}
    return records


def expected_changes(method: str) -> dict[str, float]:
    """Per-task relative change (%) of the seed-mean metrics vs STL, with Δm's sign, computed directly."""
    out = {}
    for task, keys in TASKS.items():
        (key,) = keys
        mean = sum(MTL[(method, s)][key] for s in (0, 1)) / 2
        base = STL[task][key]
        sign = -1 if key == "semseg/miou" else 1
        out[task] = 100 * sign * (mean - base) / base
    return out


def test_figures_are_written_beside_the_leaderboard_and_linked(tmp_path):
    out = write_leaderboard(_write(tmp_path, logged_records()), tmp_path / "out" / "board.md", plot=True)
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["board.md", "board.png", "board_conflict.png", "board_curves.png", "board_pareto.png",
                     "board_weights.png"]
    md = out.read_text()
    assert "## Figures" in md
    for name in names[1:]:
        assert f"]({name})" in md and (out.parent / name).stat().st_size > 0


def test_pareto_scatter_plots_the_per_task_change_vs_stl(tmp_path, monkeypatch):
    records = logged_records()
    changes = figures.task_changes(summarize(records))["default/toy"]
    for method in ("ew", "pcgrad", "mgda_ub"):
        assert changes[method] == pytest.approx(expected_changes(method))
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    figures.plot_pareto(summarize(records), tmp_path / "p.png")
    (fig,) = drawn
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_xlabel().split(":")[0] + "/" + ax.get_ylabel().split(":")[0] for ax in axes] == \
        ["semseg/depth", "semseg/normal", "depth/normal"]
    for ax in axes:
        a, b = ax.get_xlabel().split(":")[0], ax.get_ylabel().split(":")[0]
        pairs = {tuple(round(float(v), 9) for v in c.get_offsets()[0]) for c in ax.collections}
        assert pairs == {(round(expected_changes(m)[a], 9), round(expected_changes(m)[b], 9))
                         for m in ("ew", "pcgrad", "mgda_ub")}


def test_pareto_front_by_hand():
    points = {"a": {"x": 0.0, "y": 0.0}, "b": {"x": -1.0, "y": 1.0}, "c": {"x": 1.0, "y": 1.0},
              "d": {"x": 0.0, "y": 0.0}}
    assert figures.pareto_optimal(points) == {"a", "b", "d"}


def test_conflict_matrix_is_the_seed_mean_of_the_logged_cosines():
    mats = figures.conflict_matrices(logged_records())
    tasks, mat = mats["default/toy: pcgrad"]
    assert tasks == list(TASKS)
    for pair, c in COS["pcgrad"].items():
        a, b = (tasks.index(t) for t in pair.split("/"))
        assert float(mat[a, b]) == pytest.approx(c + 0.05) and float(mat[b, a]) == pytest.approx(c + 0.05)
    assert all(float(mat[i, i]) == 1.0 for i in range(3))


def test_weight_series_and_curves_average_the_seeds():
    series = figures.weight_series(logged_records())["default/toy: ew"]
    assert series["depth"] == ([0, 2, 4], [2.5, 4.5, 6.5])
    curves = figures.epoch_curves(logged_records(), summarize(logged_records()))["default/toy: mgda_ub"]
    assert curves["train_loss"] == [3.0, 6.0, 9.0] and curves["val_loss"] == [3.0, 2.0, 1.0]
    final = [figures.delta_m(MTL[("mgda_ub", s)], {k: v for t in STL.values() for k, v in t.items()},
                           {"semseg/miou": "higher", "depth/abs_err": "lower", "normal/mean": "lower"}) for s in (0, 1)]
    assert curves["test_delta_m"][-1] == pytest.approx(sum(final) / 2)
    assert not math.isnan(curves["test_delta_m"][0])


def test_no_figure_without_the_data(tmp_path):
    records = make_records(stl_tasks=())
    assert figures.plot_pareto(summarize(records), tmp_path / "p.png") is None
    assert figures.plot_weights(records, tmp_path / "w.png") is None
    assert figures.plot_conflict(records, tmp_path / "c.png") is None
    assert not list(tmp_path.iterdir())
