"""The leaderboard's paired comparison (report/paired.py, docs/protocols.md R.6): per-seed Δm − EW and Δm − control,
their means and 95% CIs against scipy's paired t-test on an independent Δm, the separability mark, the control
pairing and its warning, unmatched seeds, and the paired bar figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from scipy import stats

import benchmark.report.figures as figures
from benchmark.report.markdown import build_leaderboard
from benchmark.report.summary import summarize
from tests.test_leaderboard import METRICS, STL, TASKS, _cells, make_record

SEEDS = (0, 1, 2)
SHARED = {0: 0.0, 1: 1.5, 2: -1.0}
"""Per-seed noise every method shares (a bad seed is bad for all): it cancels in the paired differences."""
BASE = {"ew": (38.0, 0.62, 27.0), "pcgrad": (40.0, 0.58, 25.5), "noisy": (),
        "worse": (36.0, 0.66, 28.0), "ew-taskbn": (39.0, 0.60, 26.5), "cso": (41.0, 0.57, 25.0)}
TASK_BN = {"task_bn": True}


NOISY = {0: 4.0, 1: -5.0, 2: 2.0}
"""``noisy`` is EW with these mIoU offsets per seed: a paired difference whose CI spans 0."""


def metrics(label: str, seed: int) -> dict[str, float]:
    """A row's test metrics on a seed: its base values, the shared seed noise, and a small jitter of its own."""
    if label == "noisy":
        return {**metrics("ew", seed), "semseg/miou": metrics("ew", seed)["semseg/miou"] + NOISY[seed]}
    miou, abs_err, normal = BASE[label]
    jitter = 0.2 * np.random.default_rng([sorted(BASE).index(label), seed]).normal(0.0, 1.0, 3)
    c = SHARED[seed]
    return {"semseg/miou": miou - 2 * c + jitter[0], "depth/abs_err": abs_err * (1 + 0.05 * c + 0.01 * jitter[1]),
            "normal/mean": normal + c + jitter[2]}


def record(label: str, seed: int) -> dict:
    method = "ew" if label.startswith("ew") else label
    out = make_record(method if method in ("ew", "pcgrad") else "ew", seed, metrics(label, seed))
    overrides = TASK_BN if label in ("ew-taskbn", "cso") else {}
    out.update(method=method, method_label=label, run_id=f"default/toy/{label}/seed{seed}",
               model={"name": "segnet", "params": {"width": 12, **overrides}, "overrides": overrides})
    return out


def records(labels=tuple(BASE), skip=()):
    out = [record(label, s) for label in labels for s in SEEDS if (label, s) not in skip]
    return out + [make_record("ew", 0, STL[t], kind="stl", stl_task=t) for t in TASKS]


def independent_delta_m(values: dict[str, float]) -> float:
    baseline = {k: v for t in STL.values() for k, v in t.items()}
    signs = {k: -1.0 if spec["direction"] == "higher" else 1.0 for k, spec in METRICS.items()}
    return 100.0 * float(np.mean([signs[k] * (values[k] - baseline[k]) / baseline[k] for k in METRICS]))


def expected(label: str, reference: str, seeds=SEEDS):
    """Per-seed differences, mean and 95% CI from numpy and scipy's ``ttest_rel``, with its p-value (for one
    seed: the difference only)."""
    a = np.array([independent_delta_m(metrics(label, s)) for s in seeds])
    b = np.array([independent_delta_m(metrics(reference, s)) for s in seeds])
    if len(seeds) < 2:
        return a - b, float(np.mean(a - b)), None, None
    test = stats.ttest_rel(a, b)
    low, high = test.confidence_interval(0.95)
    return a - b, float(np.mean(a - b)), (float(low), float(high)), float(test.pvalue)


def paired_table(md: str) -> dict[str, dict[str, str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | paired seeds vs EW |"))
    header = _cells(lines[start])
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        body.append(_cells(line))
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in body}


def test_paired_mean_and_ci_match_scipy_on_an_independent_delta_m():
    md = build_leaderboard(records())
    table = paired_table(md)
    row = {r.label: r for r in summarize(records())[0].rows}
    for label in ("pcgrad", "noisy", "worse", "cso", "ew-taskbn"):
        diffs, mean, (low, high), _ = expected(label, "ew")
        got = row[label].vs_ew.stats
        assert got.n == 3 and got.mean == pytest.approx(mean, rel=1e-9)
        assert got.ci95_half_width == pytest.approx((high - low) / 2, rel=1e-9)
        assert list(got.differences.values()) == pytest.approx(list(diffs), rel=1e-9)
        assert table[label]["Δm − EW ↓ mean [95% CI]"] == f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
        assert table[label]["Δm − EW per seed"] == ", ".join(f"{s}: {d:+.2f}" for s, d in zip(SEEDS, diffs))
        assert table[label]["paired seeds vs EW"] == "3"
    assert table["ew"]["Δm − EW ↓ mean [95% CI]"] == "reference"
    assert "Paired by seed (the headline" in md and "Unpaired (each row on its own)" in md


def test_seeds_to_separate_two_points_follow_the_spread_of_the_differences():
    """The power column: the fewest seeds n whose t-interval at the observed spread is under ±2 points."""
    table = paired_table(build_leaderboard(records()))
    for label in ("pcgrad", "noisy", "worse"):
        spread = float(np.std(expected(label, "ew")[0], ddof=1))
        n = next(n for n in range(2, 1001) if stats.t.ppf(0.975, n - 1) * spread / math.sqrt(n) < 2.0)
        assert table[label]["seeds to separate 2 points"] == str(n), label
    assert table["noisy"]["seeds to separate 2 points"] != table["pcgrad"]["seeds to separate 2 points"]


def test_the_paired_interval_is_narrower_than_the_unpaired_one_here():
    row = {r.label: r for r in summarize(records())[0].rows}["pcgrad"]
    unpaired = float(stats.t.ppf(0.975, row.delta_m.n - 1)) * row.delta_m.std / math.sqrt(row.delta_m.n)
    assert row.vs_ew.stats.ci95_half_width < unpaired / 5


def test_separability_mark_is_the_ci_excluding_zero():
    table = paired_table(build_leaderboard(records()))
    marks = {"pcgrad": "**yes, better**", "worse": "**yes, worse**", "noisy": "no", "cso": "**yes, better**"}
    for label, mark in marks.items():
        _, mean, (low, high), pvalue = expected(label, "ew")
        assert (pvalue < 0.05) == (mark != "no") == (low > 0 or high < 0), label
        assert table[label]["separable from EW"] == mark
    assert table["ew"]["separable from EW"] == "—"


def test_rows_are_ordered_by_the_paired_difference():
    rows = summarize(records(skip={("pcgrad", 2)}))[0].rows
    full = [r for r in rows if not r.fewer_seeds]
    paired = [0.0 if r.label == "ew" else r.vs_ew.stats.mean for r in full]
    assert paired == sorted(paired) and rows[0].label == "cso"
    assert [r.label for r in rows[len(full):]] == ["pcgrad"]  # fewer seeds: after the full rows


def test_a_method_on_a_modified_model_is_paired_with_its_control():
    md = build_leaderboard(records())
    table = paired_table(md)
    _, mean, (low, high), pvalue = expected("cso", "ew-taskbn")
    assert table["cso"]["control"] == "ew-taskbn"
    assert table["cso"]["Δm − control ↓ mean [95% CI]"] == f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
    assert table["cso"]["separable from control"] == ("no" if pvalue >= 0.05 else
                                                      "**yes, better**" if mean < 0 else "**yes, worse**")
    assert table["ew-taskbn"]["control"] == "(is the control)"
    assert table["pcgrad"]["control"] == "—" and table["pcgrad"]["Δm − control ↓ mean [95% CI]"] == "—"
    assert "**Warning:**" not in md


def test_missing_control_is_a_warning_naming_the_suite_entry():
    labels = [label for label in BASE if label != "ew-taskbn"]
    md = build_leaderboard(records(labels))
    warning = next(line for line in md.splitlines() if line.startswith("> **Warning:**"))
    assert "cso trains on segnet(task_bn=true), but no EW run on that model" in warning
    assert "`{name: ew, label: ew-taskbn, model: {task_bn: true}}`" in warning
    table = paired_table(md)
    assert table["cso"]["control"] == "**missing**"
    assert table["cso"]["Δm − EW ↓ mean [95% CI]"].startswith(f"{expected('cso', 'ew')[1]:+.2f} [")
    assert summarize(records(labels))[0].paired_warnings == [warning.removeprefix("> **Warning:** ")]


def test_no_control_columns_when_every_row_is_on_the_suites_model():
    md = build_leaderboard(records(["ew", "pcgrad"]))
    assert "control" not in md.split("Paired by seed vs EW:")[1].splitlines()[2]
    assert "**Warning:**" not in md


def test_unmatched_seeds_are_paired_on_the_common_ones_and_named():
    table = paired_table(build_leaderboard(records(skip={("pcgrad", 2), ("ew", 1), ("cso", 0)})))
    _, mean, _, _ = expected("pcgrad", "ew", seeds=(0,))
    assert table["pcgrad"]["paired seeds vs EW"] == \
        "1 (common seeds only: ew seed 2 not run here; seed 1 not run by ew)"
    assert table["pcgrad"]["Δm − EW ↓ mean [95% CI]"] == f"{mean:+.2f} (1 seed: no CI)"
    assert table["pcgrad"]["separable from EW"] == "n/a"
    _, mean, (low, high), _ = expected("worse", "ew", seeds=(0, 2))
    assert table["worse"]["paired seeds vs EW"] == "2 (common seeds only: seed 1 not run by ew)"
    assert table["worse"]["Δm − EW ↓ mean [95% CI]"] == f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
    _, mean, (low, high), _ = expected("cso", "ew-taskbn", seeds=(1, 2))
    assert table["cso"]["paired seeds vs control"] == "2 (common seeds only: ew-taskbn seed 0 not run here)"
    assert table["cso"]["Δm − control ↓ mean [95% CI]"] == f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def test_no_common_seed_and_no_ew_are_said():
    table = paired_table(build_leaderboard(records(["ew", "pcgrad"], skip={("pcgrad", s) for s in (0, 1)}
                                                   | {("ew", 2)})))
    assert table["pcgrad"]["Δm − EW ↓ mean [95% CI]"] == "n/a (no common seed)"
    md = build_leaderboard(records(["pcgrad", "worse"]))
    assert "> **Warning:** No plain EW run" in md and "Paired by seed vs EW:" not in md


def test_bar_figure_draws_the_paired_means_with_their_ci(tmp_path, monkeypatch):
    summaries = summarize(records())
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    figures.plot_leaderboard(summaries, tmp_path / "bars.png")
    (fig,) = drawn
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    rows = [r.label for r in summaries[0].rows]
    assert labels[[r.label for r in summaries[0].rows].index("ew")] == "ew (reference, n=3)"
    widths = {label.split(" (")[0]: bar.get_width() for label, bar in zip(labels, ax.patches, strict=True)}
    for label in rows:
        assert widths[label] == pytest.approx(0.0 if label == "ew" else expected(label, "ew")[1], rel=1e-9)
    bars = next(c for c in ax.containers if isinstance(c, ErrorbarContainer))
    segments = bars.lines[2][0].get_segments()
    for label, segment in zip(labels, segments, strict=True):
        name = label.split(" (")[0]
        if name != "ew":
            _, _, (low, high), _ = expected(name, "ew")
            assert sorted(segment[:, 0]) == pytest.approx([low, high], rel=1e-9)
    title = fig._suptitle.get_text()
    assert "3 seeds" in title and "95% CI" in title and "paired by seed vs EW" in title
    assert "EW (reference)" in [t.get_text() for legend in fig.legends for t in legend.get_texts()]
