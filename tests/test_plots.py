"""The local figures: drawn from records, linked from leaderboard.md, and plotting the numbers the records hold."""

from __future__ import annotations

import math
import random

import pytest
from matplotlib.text import Text

import benchmark.report.figures as figures
from benchmark.report.markdown import write_leaderboard
from benchmark.report.summary import summarize
from tests.test_leaderboard import MTL, STL, TASKS, _write, make_record, make_records

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


CROWD = ["ew", "mgda_ub", "imtl_h", "cso", "famo", "pcgrad-u4", "cagrad-u4", "nash_mtl-u4", "aligned_mtl-u4",
         "upgrad-u4"]


def crowded_records():
    """Ten methods of the default suite's size, two seeds, scores within a few percent of each other (labels
    crowd), weights on different scales, four epochs, and CSO's channel shares."""
    rng = random.Random(0)
    records = []
    for i, method in enumerate(CROWD):
        for seed in (0, 1):
            final = {k: v * (1 + rng.uniform(-0.06, 0.06)) for t in STL.values() for k, v in t.items()}
            r = make_record("ew", seed, final, n_epochs=4)
            r.update(method=method.split("-")[0], method_label=method, run_id=f"default/toy/{method}/seed{seed}")
            r["method_stats"] = {f"grad_cos/{pair}": {"mean": rng.uniform(-0.1, 0.4)}
                                 for pair in ("semseg/depth", "semseg/normal", "depth/normal")}
            r["step_log"] = {"every": 8, "stride": 1, "logged_steps": 12, "points": [
                {"batch": b, "epoch": b // 32, **{f"weight_{t}": (1 + i % 3) * (0.5 + rng.random()) for t in TASKS}}
                for b in range(0, 128, 8)]}
            for e, entry in enumerate(r["epochs"]):
                entry["method_stats"] = {f"loss_{t}": 3.0 - 0.4 * e + rng.random() for t in TASKS}
                if method == "cso":
                    shares = [0.3 + 0.02 * e, 0.4 - 0.01 * e, 0.3 - 0.01 * e]
                    entry["method_stats"].update({f"priority/{t}": v for t, v in zip(TASKS, shares, strict=True)})
            records.append(r)
    return records + [r for r in make_records() if r["kind"] == "stl"]


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


@pytest.fixture(autouse=True)
def close_figures():
    yield
    figures._pyplot().close("all")


def drawn_figures(records, monkeypatch, tmp_path):
    """Every figure of ``records``, as matplotlib figures (caught before they are saved and closed)."""
    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.setdefault(path.stem.split("_")[-1], fig) and path)
    figures.write_figures(records, summarize(records), tmp_path / "board.md")
    return drawn


def text_boxes(fig):
    """The window extent of every text the figure draws: titles, axis and tick labels, annotations, cell values,
    legend entries (annotations without their leader lines)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.texts if t.get_text()]
    for legend in fig.legends:
        texts += legend.get_texts()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label,
                  ax.xaxis.get_offset_text(), ax.yaxis.get_offset_text(), *ax.texts]
        for axis, (low, high) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            low, high = sorted((low, high))
            texts += [tick.label1 for tick in axis.get_major_ticks()
                      if tick.label1.get_visible() and low - 1e-9 <= tick.get_loc() <= high + 1e-9]
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    return [(t.get_text(), Text.get_window_extent(t, renderer)) for t in texts if t.get_visible() and t.get_text()]


def assert_no_text_overlaps(fig):
    boxes = text_boxes(fig)
    frame = fig.bbox
    for text, box in boxes:
        inside = frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1
        assert inside, f"{text!r} leaves the figure: {box} not in {frame}"
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            assert not box_a.overlaps(box_b), f"{a!r} {box_a} overlaps {b!r} {box_b}"


def legend_outside_data(fig):
    """The figure has exactly one legend and it meets no visible data axes."""
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes if ax.get_visible())


def two_suites_one_seed():
    """Seed 0 of :func:`logged_records`, as two suites (one panel or map each)."""
    first = [r for r in logged_records() if r["seed"] == 0]
    second = [{**r, "suite": "other", "run_id": r["run_id"].replace("default/", "other/")} for r in logged_records()
              if r["seed"] == 0]
    return first + second


@pytest.mark.parametrize(("make", "seeds"), [(logged_records, "2 seeds"), (crowded_records, "2 seeds"),
                                             (two_suites_one_seed, "1 seed")])
def test_every_figure_has_no_overlapping_text_and_one_legend_outside_the_data(make, seeds, monkeypatch, tmp_path):
    drawn = drawn_figures(make(), monkeypatch, tmp_path)
    expected = {"board", "pareto", "weights", "conflict", "curves", *(["priority"] if make is crowded_records else [])}
    assert set(drawn) == expected
    for name, fig in drawn.items():
        assert_no_text_overlaps(fig)
        if name != "conflict":
            legend_outside_data(fig)
        assert f"mean over {seeds}" in fig.get_suptitle(), name


def test_methods_are_compared_on_shared_scales(monkeypatch, tmp_path):
    drawn = drawn_figures(crowded_records(), monkeypatch, tmp_path)
    for name in ("pareto", "weights", "priority"):
        axes = [ax for ax in drawn[name].axes if ax.get_visible()]
        assert len(axes) >= (1 if name == "priority" else 3), name
        assert len({ax.get_ylim() for ax in axes}) == 1 and len({ax.get_xlim() for ax in axes}) == 1, name
    pareto = [ax for ax in drawn["pareto"].axes if ax.get_visible()]
    assert pareto[0].get_xlim() == pareto[0].get_ylim()
    values = [v for p in figures.task_changes(summarize(crowded_records()))["default/toy"].values() for v in p.values()]
    low, high = pareto[0].get_xlim()
    assert low < min(values) and max(values) < high and low < 0
    weights = [ax for ax in drawn["weights"].axes if ax.get_visible()]
    assert len(weights) == len(CROWD)
    assert all(any(line.get_ydata()[0] == 1.0 and line.get_linestyle() == "--" for line in ax.lines) for ax in weights)


def test_conflict_map_is_off_diagonal_on_one_colour_scale(monkeypatch, tmp_path):
    records = crowded_records()
    fig = drawn_figures(records, monkeypatch, tmp_path)["conflict"]
    images = [im for ax in fig.axes for im in ax.images]
    assert len({id(im.colorbar) for im in images}) == 1 and images[0].colorbar is not None
    assert len({(im.norm.vmin, im.norm.vmax) for im in images}) == 1
    assert -images[0].norm.vmin == images[0].norm.vmax
    labels, pairs, values = figures.conflict_table(records)["default/toy"]
    assert pairs == ["semseg–depth", "semseg–normal", "depth–normal"] and labels == sorted(CROWD)
    mats = figures.conflict_matrices(records)
    for label, row in zip(labels, values, strict=True):
        tasks, mat = mats[f"default/toy: {label}"]
        assert row == pytest.approx([float(mat[0, 1]), float(mat[0, 2]), float(mat[1, 2])])
    assert images[0].get_array().shape == (len(CROWD), 3)
    assert 1.0 not in images[0].get_array()


def test_bars_show_the_paired_tables_ci_and_mark_ew(monkeypatch, tmp_path):
    fig = drawn_figures(logged_records(), monkeypatch, tmp_path)["board"]
    (ax,) = fig.axes
    rows = {r.label: r.vs_ew for r in summarize(logged_records())[0].rows}
    bars = {label.get_text().split(" (")[0]: patch for label, patch in zip(ax.get_yticklabels(), ax.patches,
                                                                          strict=True)}
    assert set(bars) == set(rows)
    for label, patch in bars.items():
        assert patch.get_width() == pytest.approx(0.0 if label == "ew" else rows[label].stats.mean)
    (container,) = [c for c in ax.containers if hasattr(c, "errorbar")]
    (errors,) = container.errorbar.lines[2]
    halves = sorted(round((seg[1][0] - seg[0][0]) / 2, 9) for seg in errors.get_segments())
    assert halves == sorted([0.0] + [round(p.stats.ci95_half_width, 9) for k, p in rows.items() if k != "ew"])
    assert bars["ew"].get_edgecolor()[:3] == (0.0, 0.0, 0.0) and bars["pcgrad"].get_edgecolor()[:3] != (0.0, 0.0, 0.0)
    assert any(list(line.get_xdata()) == [0.0, 0.0] for line in ax.lines)
    assert "paired by seed vs EW" in fig._suptitle.get_text()


def test_epoch_axes_have_integer_ticks_and_priorities_a_one_over_t_line(monkeypatch, tmp_path):
    drawn = drawn_figures(crowded_records(), monkeypatch, tmp_path)
    for name in ("curves", "priority"):
        for ax in drawn[name].axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), name
            assert ax.get_xlabel() == "epoch"
            assert ax.get_ylabel() == "" or "(" in ax.get_ylabel()
    (priority,) = [ax for ax in drawn["priority"].axes if ax.get_visible()]
    assert any(list(line.get_ydata()) == [1 / 3, 1 / 3] for line in priority.lines)


def test_labels_are_placed_apart_even_when_points_coincide(tmp_path):
    fig, axes = figures._figure(4, 4)
    ax = axes[0, 0]
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    figures._arrange(fig)
    points = [(f"method-{i}", 0.01 * (i % 3), 0.01 * (i // 3)) for i in range(9)]
    notes = figures.place_labels(ax, points)
    assert [n.get_text() for n in notes] == [p[0] for p in points]
    assert_no_text_overlaps(fig)
