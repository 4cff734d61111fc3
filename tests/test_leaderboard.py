"""Leaderboards built from synthetic run records; expected numbers are computed here independently."""

from __future__ import annotations

import json
import statistics

import pytest

from benchmark.records import load_records
from benchmark.report.markdown import build_leaderboard, write_leaderboard
from benchmark.report.summary import summarize

METRICS = {
    "semseg/miou": {"direction": "higher", "unit": "percent"},
    "depth/abs_err": {"direction": "lower", "unit": "metres"},
    "normal/mean": {"direction": "lower", "unit": "degrees"},
}
TASKS = {"semseg": ["semseg/miou"], "depth": ["depth/abs_err"], "normal": ["normal/mean"]}
MTL = {
    ("ew", 0): {"semseg/miou": 38.0, "depth/abs_err": 0.62, "normal/mean": 27.0},
    ("ew", 1): {"semseg/miou": 39.0, "depth/abs_err": 0.60, "normal/mean": 26.0},
    ("pcgrad", 0): {"semseg/miou": 40.0, "depth/abs_err": 0.58, "normal/mean": 25.5},
    ("pcgrad", 1): {"semseg/miou": 42.0, "depth/abs_err": 0.57, "normal/mean": 25.0},
    ("mgda_ub", 0): {"semseg/miou": 43.0, "depth/abs_err": 0.55, "normal/mean": 24.0},
    ("mgda_ub", 1): {"semseg/miou": 44.0, "depth/abs_err": 0.52, "normal/mean": 23.5},
}
STL = {"semseg": {"semseg/miou": 41.0}, "depth": {"depth/abs_err": 0.60}, "normal": {"normal/mean": 25.0}}
STEP_TIME = {"ew": 0.05, "pcgrad": 0.1, "mgda_ub": 0.2, "stl": 0.04}


def _worse(values, factor):
    return {k: v / factor if METRICS[k]["direction"] == "higher" else v * factor for k, v in values.items()}


def _epochs(final, n=3, overfit=False):
    """``n`` epochs ending on the ``final`` test metrics (earlier ones worse; val tracks test).

    With ``overfit``, one more epoch follows whose val metrics, val loss and test metrics are all worse.
    """
    out = []
    for e in range(n):
        test = dict(final) if e == n - 1 else _worse(final, 2.0)
        out.append(
            {"epoch": e, "step": 8 * (e + 1), "val": dict(test), "val_loss": float(n - e), "test": test}
        )
    if overfit:
        test = _worse(final, 1.5)
        out.append({"epoch": n, "step": 8 * (n + 1), "val": dict(test), "val_loss": 9.0, "test": test})
    return out


def make_record(method, seed, final, kind="mtl", stl_task=None, suite="default", n_epochs=3, overfit=False):
    keys = list(final)
    run = f"stl-{stl_task}" if kind == "stl" else method
    return {
        "schema_version": 1,
        "run_id": f"{suite}/toy/{run}/seed{seed}",
        "suite": suite,
        "dataset": "toy",
        "method": f"stl-{stl_task}" if kind == "stl" else method,
        "method_label": run,
        "kind": kind,
        "stl_task": stl_task,
        "method_hparams": {},
        "seed": seed,
        "tasks": [{"name": t} for t in TASKS if kind == "mtl" or t == stl_task],
        "metrics": {k: METRICS[k] for k in keys},
        "epochs": _epochs(final, n_epochs, overfit),
        "timing": {
            "step_time_mean_s": STEP_TIME["stl" if kind == "stl" else method],
            "peak_memory_bytes": 1000,
        },
        "status": "finished",
    }


def make_records(stl_tasks=tuple(TASKS), n_epochs=3, overfit=False):
    """Two seeds of ew, pcgrad and mgda_ub (``overfit``: with a worse last epoch) and one STL run per task."""
    records = [make_record(m, s, v, n_epochs=n_epochs, overfit=overfit) for (m, s), v in MTL.items()]
    records += [make_record("ew", 0, STL[t], kind="stl", stl_task=t, n_epochs=n_epochs) for t in stl_tasks]
    return records


def _independent_delta_m(values):
    baseline = {k: v for t in STL.values() for k, v in t.items()}
    terms = []
    for key, spec in METRICS.items():
        sign = -1.0 if spec["direction"] == "higher" else 1.0
        terms.append(sign * (values[key] - baseline[key]) / baseline[key])
    return 100.0 * sum(terms) / len(terms)


def _independent_delta_p(values):
    """LibMTL's Δp: per task the mean signed improvement of its metrics, then the mean over tasks."""
    baseline = {k: v for t in STL.values() for k, v in t.items()}
    per_task = {}
    for key, spec in METRICS.items():
        sign = 1.0 if spec["direction"] == "higher" else -1.0
        per_task.setdefault(key.split("/")[0], []).append(sign * (values[key] - baseline[key]) / baseline[key])
    return 100.0 * statistics.mean(statistics.mean(v) for v in per_task.values())


def _row(markdown, label):
    """The row of ``label`` in the main (unpaired) table, which follows the paired table."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | seeds |"))
    return next(line for line in lines[start:] if line.startswith(f"| {label} |"))


def _cells(line):
    return [c.strip() for c in line.strip("|").split("|")]


def test_mean_std_and_delta_m_per_method():
    md = build_leaderboard(make_records())
    for method in ("ew", "pcgrad", "mgda_ub"):
        seeds = [MTL[(method, s)] for s in (0, 1)]
        cells = _cells(_row(md, method))
        miou = [v["semseg/miou"] for v in seeds]
        assert cells[2] == f"{statistics.mean(miou):.2f} ± {statistics.stdev(miou):.2f}"
        abs_err = [v["depth/abs_err"] for v in seeds]
        assert cells[3] == f"{statistics.mean(abs_err):.4f} ± {statistics.stdev(abs_err):.4f}"
        dm = [_independent_delta_m(v) for v in seeds]
        assert cells[5] == f"{statistics.mean(dm):.2f} ± {statistics.stdev(dm):.2f}"
        dp = [_independent_delta_p(v) for v in seeds]
        assert cells[7] == f"{statistics.mean(dp):.2f} ± {statistics.stdev(dp):.2f}"
        assert cells[1] == "2"


def test_header_rule_seeds_and_stl_source():
    md = build_leaderboard(make_records())
    assert "Selection rule: `last`" in md
    assert "Seeds per method: 2" in md
    assert "measured by this suite: 3 single-task runs, mean over seeds" in md
    assert "semseg/miou ↑" in md and "depth/abs_err ↓" in md
    assert "| STL depth | 1 |" in md
    assert f"Built from {len(make_records())} run records; git commit" in md


def test_rows_sorted_by_delta_m_with_ranks_and_ew_ratios():
    md = build_leaderboard(make_records())
    order = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "±" in line]
    assert order[:3] == ["mgda_ub", "pcgrad", "ew"]
    ew, pcgrad, mgda = (_cells(_row(md, m)) for m in ("ew", "pcgrad", "mgda_ub"))
    assert ew[-2] == "1.00×" and pcgrad[-2] == "2.00×" and mgda[-2] == "4.00×"
    assert mgda[8] == "1.00" and pcgrad[8] == "2.00" and ew[8] == "3.00"


def test_no_ew_gives_na_ratio():
    records = [r for r in make_records() if not (r["kind"] == "mtl" and r["method"] == "ew")]
    assert _cells(_row(build_leaderboard(records), "pcgrad"))[-2] == "n/a"


def test_missing_stl_task_gives_na_and_a_note():
    md = build_leaderboard(make_records(stl_tasks=("semseg", "normal")))
    assert _cells(_row(md, "pcgrad"))[5] == "n/a"
    note = next(line for line in md.splitlines() if line.startswith("> Note:") and "STL" in line)
    assert "depth" in note


def test_duplicated_run_id_raises():
    records = make_records()
    with pytest.raises(ValueError, match="default/toy/pcgrad/seed0"):
        build_leaderboard([*records, records[2]])


def test_duplicated_seed_under_another_run_id_raises():
    extra = make_record("pcgrad", 0, MTL[("pcgrad", 0)])
    extra["run_id"] += "-rerun"
    with pytest.raises(ValueError, match="seed 0"):
        build_leaderboard([*make_records(), extra])


def test_suites_are_separate_tables():
    records = make_records() + [make_record("ew", 0, MTL[("ew", 0)], suite="other")]
    summaries = summarize(records)
    assert [(s.suite, s.dataset) for s in summaries] == [("default", "toy"), ("other", "toy")]
    assert summaries[1].rows[0].delta_m is None


def test_last10_note_and_best_val_rule_line():
    md = build_leaderboard(make_records(n_epochs=3), rule="last10")
    assert "fewer than 10 epochs" in md
    records = make_records(overfit=True)
    md = build_leaderboard(records, rule="best-val")
    assert "Selection rule: `best-val`" in md and "Δm of the val metrics" in md
    dm = statistics.mean(_independent_delta_m(MTL[("pcgrad", s)]) for s in (0, 1))
    assert _cells(_row(md, "pcgrad"))[5].startswith(f"{dm:.2f} ±")
    assert not _cells(_row(build_leaderboard(records, rule="last"), "pcgrad"))[5].startswith(f"{dm:.2f} ±")


def _write(tmp_path, records):
    for i, record in enumerate(records):
        path = tmp_path / "runs" / f"d{i % 3}" / f"r{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    return tmp_path / "runs"


def test_write_leaderboard_skips_unfinished_and_writes_atomically(tmp_path):
    records = make_records()
    records[0]["status"] = "running"
    out = write_leaderboard(_write(tmp_path, records), tmp_path / "out" / "leaderboard.md", plot=True)
    md = out.read_text()
    assert "skipped unfinished run default/toy/ew/seed0" in md
    assert "Seeds per method: ew 1, mgda_ub 2, pcgrad 2" in md
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "leaderboard.md", "leaderboard.png", "leaderboard_curves.png", "leaderboard_pareto.png"]


def test_write_leaderboard_duplicate_run_id_names_both_files(tmp_path):
    records = make_records()
    root = _write(tmp_path, [*records, records[1]])
    with pytest.raises(ValueError) as err:
        load_records(root)
    assert "r1.json" in str(err.value) and f"r{len(records)}.json" in str(err.value)


def test_unparsable_record_names_the_file(tmp_path):
    root = _write(tmp_path, make_records())
    (root / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        write_leaderboard(root, tmp_path / "lb.md")
    assert not (tmp_path / "lb.md").exists()


def test_unfinished_records_are_skipped_with_a_note():
    records = make_records()
    records[0]["status"] = "running"
    md = build_leaderboard(records)
    assert "skipped unfinished run default/toy/ew/seed0" in md
    assert "Seeds per method: ew 1, mgda_ub 2, pcgrad 2" in md


def test_failed_and_diverged_records_are_listed_as_not_scored_and_warned():
    records = make_records()
    records[0].update(status="failed", status_reason="RuntimeError: plugin bug")
    (pcgrad,) = [r for r in records if r["method"] == "pcgrad" and r["seed"] == 1]
    pcgrad.update(status="diverged", status_reason="non-finite selected test metric(s) depth/abs_err")
    md = build_leaderboard(records)
    assert "> Not scored: `default/toy/ew/seed0` (failed): RuntimeError: plugin bug" in md
    assert f"> Not scored: `{pcgrad['run_id']}` (diverged): non-finite selected" in md
    assert "`ew` is missing seed(s) 0 (failed), not scored; its row averages the other 1 seed(s)" in md
    assert "`pcgrad` is missing seed(s) 1 (diverged)" in md
    assert "Seeds per method: ew 1, mgda_ub 2, pcgrad 1" in md


def test_stl_baseline_is_the_mean_over_stl_seeds():
    records = make_records()
    stl_semseg = next(r for r in records if r.get("stl_task") == "semseg")
    records.remove(stl_semseg)
    low, high = STL["semseg"]["semseg/miou"] - 3.0, STL["semseg"]["semseg/miou"] + 3.0
    records += [
        make_record("ew", s, {"semseg/miou": v}, kind="stl", stl_task="semseg")
        for s, v in ((0, low), (1, high))
    ]
    md = build_leaderboard(records)
    assert "measured by this suite: 4 single-task runs, mean over seeds" in md
    dm = [_independent_delta_m(MTL[("pcgrad", s)]) for s in (0, 1)]
    assert _cells(_row(md, "pcgrad"))[5] == f"{statistics.mean(dm):.2f} ± {statistics.stdev(dm):.2f}"
    assert (
        _cells(_row(md, "STL semseg"))[2]
        == f"{statistics.mean([low, high]):.2f} ± {statistics.stdev([low, high]):.2f}"
    )


def test_rows_follow_method_label_and_null_metrics_are_not_scored():
    """A record with a null (NaN) selected metric never turns its row NaN: it is listed as not scored and left
    out of Δm, CIs and ranks, with a warning for the seeds its method misses."""
    records = make_records()
    extra = [make_record("ew", s, MTL[("ew", s)]) for s in (0, 1)]
    for record in extra:
        record["method_label"] = "ew-big"
        record["run_id"] = record["run_id"].replace("/ew/", "/ew-big/")
        record["epochs"][-1]["test"]["normal/mean"] = None
        record["timing"]["step_time_mean_s"] = None
    md = build_leaderboard(records + extra)
    assert _cells(_row(md, "ew"))[-2] == "1.00×"
    assert "| ew-big |" not in md
    for record in extra:
        assert (f"> Not scored: `{record['run_id']}` (finished): non-finite selected test metric(s) normal/mean"
                in md)
    assert "`ew-big` is missing seed(s) 0 (finished), 1 (finished), not scored; it has no row." in md
    order = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "±" in line]
    assert order[:3] == ["mgda_ub", "pcgrad", "ew"] and "ew-big" not in order


def test_memory_ratio_only_for_cuda_peaks():
    records = make_records()
    rows = {r.label: r for r in summarize(records)[0].rows}
    assert all(r.memory_ratio is None for r in rows.values())
    for r in records:
        peak = 3000 if r["method"] == "mgda_ub" else 1000
        r["timing"].update(peak_memory_kind="cuda_allocated", peak_memory_bytes=peak)
    rows = {r.label: r for r in summarize(records)[0].rows}
    assert rows["mgda_ub"].memory_ratio == pytest.approx(3.0) and rows["ew"].memory_ratio == pytest.approx(1.0)


def test_auxiliary_task_is_a_column_but_not_in_delta_m_or_rank():
    """An auxiliary task (no STL run, values that would reorder the ranks) changes neither Δm nor MR."""
    plain = summarize(make_records())[0]
    records = make_records()
    edge = {"ew": 0.1, "pcgrad": 0.2, "mgda_ub": 0.3}
    for r in records:
        if r["kind"] == "mtl":
            r["tasks"].append({"name": "edge", "auxiliary": True})
            r["metrics"]["edge/loss"] = {"direction": "lower", "unit": "bce"}
            for e in r["epochs"]:
                for split in ("val", "test"):
                    e[split]["edge/loss"] = edge[r["method"]]
    summary = summarize(records)[0]
    assert not summary.missing_stl_tasks and not any("STL" in n for n in summary.notes)
    assert [s.key for s in summary.metrics if s.auxiliary] == ["edge/loss"]
    for row, ref in zip(summary.rows, plain.rows, strict=True):
        assert row.label == ref.label and row.delta_m == ref.delta_m and row.mean_rank == ref.mean_rank
        assert row.metrics["edge/loss"].mean == edge[row.method]
    assert "edge/loss ↓ (aux)" in build_leaderboard(records)
    for r in records:
        r["tasks"][-1]["auxiliary"] = False
    assert summarize(records)[0].missing_stl_tasks == ["edge"]


def test_best_val_on_a_test_split_is_flagged():
    records = make_records(overfit=True)
    assert "selects on test" not in build_leaderboard(records, rule="best-val")
    for r in records:
        r.setdefault("dataset_info", {})["val_is_test"] = True
    assert "selects on test" in build_leaderboard(records, rule="best-val")
    assert "selects on test" not in build_leaderboard(records, rule="last")


def test_readme_column_entry_adds_one_column(monkeypatch):
    import re
    from pathlib import Path

    import benchmark.report.columns as columns

    monkeypatch.setattr(columns, "SCORE_COLUMNS", list(columns.SCORE_COLUMNS))
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Adding a leaderboard column", 1)[1]
    exec(re.search(r"```python\n(.*?)```", section, re.S).group(1), {})
    lines = build_leaderboard(make_records()).splitlines()
    header = next(line for line in lines if line.startswith("| method | seeds"))
    assert header.endswith("| peak mem ×EW | seed list |")
    assert "| 0, 1 |" in build_leaderboard(make_records())


def test_write_leaderboard_summarizes_once(tmp_path, monkeypatch):
    import benchmark.report.markdown as markdown

    calls = []
    real = markdown.summarize
    monkeypatch.setattr(markdown, "summarize", lambda *a, **k: calls.append(a) or real(*a, **k))
    write_leaderboard(_write(tmp_path, make_records()), tmp_path / "out" / "leaderboard.md", plot=True)
    assert len(calls) == 1


def test_reporting_layers_import_only_downward():
    """records and scoring (layer 2) and run_log never import report/ (layer 3); report/ never imports the
    commands (layer 4); report modules import each other one way: summary <- figures <- markdown."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "benchmark"

    def imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    for name in ("records.py", "scoring.py", "run_log.py", "sweep.py"):
        assert not {m for m in imports(root / name) if m.startswith("benchmark.report")}, name
    for path in (root / "report").glob("*.py"):
        found = imports(path)
        assert not found & {"benchmark.cli", "benchmark.launch", "benchmark.perf"}, path.name
    assert "benchmark.report.markdown" not in imports(root / "report" / "figures.py")
    assert not imports(root / "report" / "summary.py") & {"benchmark.report.figures", "benchmark.report.markdown"}
    assert not (root / "leaderboard.py").exists() and not (root / "plots.py").exists()
