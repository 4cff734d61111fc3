"""Scored metric sets per protocol (docs/protocols.md §M.6), best-val on Δp, the STL-variance Δm CI (§M.7) and the
leaderboard's seed marks, checked against reference_tables.yaml and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from benchmark.config import load_suite
from benchmark.records import RecordMetric, record_metric
from benchmark.report.markdown import build_leaderboard
from benchmark.report.paper_tables import load_protocol, load_registry, table_metric_keys
from benchmark.report.summary import summarize
from benchmark.runner import create_datamodule
from benchmark.runner.record import suite_scoring
from benchmark.scoring import delta_m_ci95, load_reference_tables, record_scoring, select_with_info
from benchmark.tasks import metric_table

REGISTRY = load_registry()
TABLES = load_reference_tables()
BUILDABLE = [n for n in REGISTRY if "celeba" not in n]  # CelebA's datamodule reads its annotation files


def _protocol(name):
    suite = load_protocol(REGISTRY[name])
    dm = create_datamodule(suite)
    return suite, dm, metric_table(dm.tasks)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="semseg logs no mean class accuracy (seg_macc) yet"))
    if n == "cso-nyud" else n for n in BUILDABLE])
def test_every_published_column_maps_to_a_record_metric(name):
    _, _, metrics = _protocol(name)
    table = TABLES[REGISTRY[name].reference]
    _, unmatched = table_metric_keys(table, list(metrics), REGISTRY[name].metrics)
    assert unmatched == []


@pytest.mark.parametrize("name", [n for n in BUILDABLE if (TABLES[REGISTRY[n].reference].get("delta") or {})
                                  and n != "cso-ablation"])
def test_protocol_scoring_is_its_reference_tables_delta(name):
    """The leaderboard's scored set and sign are the reference table's Δ definition (the one `mtobench table` uses)."""
    suite, dm, metrics = _protocol(name)
    table = TABLES[REGISTRY[name].reference]
    keys, _ = table_metric_keys(table, list(metrics), REGISTRY[name].metrics)
    spec = table["delta"]
    published = spec.get("metrics") or [m["key"] for m in table["metrics"]]
    scoring = suite_scoring(suite, dm)
    assert scoring["metrics"] == [keys[n] for n in published]
    assert scoring["higher_is_better"] == (spec["name"] == "delta_m" and spec.get("direction") == "higher")
    assert "rmse" not in " ".join(scoring["metrics"]) or name.startswith("cso-nyud")


def _records(suite, dm, metrics, table, keys):
    """One STL run per task at the published baseline and one run per complete published row at its values; every
    logged metric without a published value (e.g. depth RMSE) gets 1.0."""
    scoring = suite_scoring(suite, dm)
    base = table["baseline"]["values"]
    tasks = [t for t in dm.tasks]

    def values(row_values, task=None):
        out = {}
        for key in metrics:
            if task is not None and not key.startswith(f"{task}/"):
                continue
            name = next((n for n, k in keys.items() if k == key), None)
            out[key] = float(row_values[name]) if name in row_values else 1.0
        return out

    def record(run, kind, vals, stl_task=None):
        return {"schema_version": 1, "run_id": f"{suite.name}/{run}/seed0", "suite": suite.name,
                "dataset": suite.dataset.name, "method": run, "method_label": run, "kind": kind, "stl_task": stl_task,
                "seed": 0, "tasks": [{"name": t.name, "auxiliary": t.auxiliary} for t in tasks],
                "metrics": {k: metrics[k] for k in vals}, "scoring": scoring, "status": "finished",
                "epochs": [{"epoch": 0, "val": vals, "test": vals}], "config": {"stl_baseline": "measured"}}

    rows = [r for r in table["rows"] if r.get("values") and all(n in r["values"] for n in keys)]
    out = [record(f"row{i}", "mtl", values(r["values"])) for i, r in enumerate(rows)]
    out += [record(f"stl-{t.name}", "stl", values(base, t.name), t.name) for t in tasks if not t.auxiliary]
    return out, rows


@pytest.mark.parametrize("name", ["nashmtl-nyuv2", "nashmtl-cityscapes", "libmtl-nyuv2", "cso-nyud", "cso-pascal",
                                  "cso-cityscapes"])
def test_published_rows_recompute_from_records(name):
    """A published row, logged as a record, gets the leaderboard Δm (Δp for DB-MTL) its table lists (recomputed, to
    its printed decimals) and the printed value within its rounding interval, unless the table documents the row's
    discrepancy in a note (e.g. CSO's PCGrad AbsErr printed with 2 digits)."""
    from benchmark.scoring import recompute_table

    suite, dm, metrics = _protocol(name)
    table = TABLES[REGISTRY[name].reference]
    keys, _ = table_metric_keys(table, list(metrics), REGISTRY[name].metrics)
    records, rows = _records(suite, dm, metrics, table, keys)
    (summary,) = summarize(records, "last")
    ours = {r.label: r for r in summary.rows}
    checks = {c["method"]: c for c in recompute_table(table)}
    is_p = table["delta"]["name"] == "delta_p"
    for i, row in enumerate(rows):
        got = (ours[f"row{i}"].delta_p if is_p else ours[f"row{i}"].delta_m).mean
        assert got == pytest.approx(checks[row["method"]]["delta"], abs=1e-9)
        if row.get("delta_recomputed") is not None:
            half = 0.5 * 10.0 ** -len(repr(float(row["delta_recomputed"])).split(".")[1])
            assert abs(got - row["delta_recomputed"]) <= half + 1e-9, row["method"]
        if row.get("delta_reported") is None:
            continue
        inside = abs(got - row["delta_reported"]) <= checks[row["method"]]["rounding_bound"] + 1e-9
        assert inside or row.get("note"), f"{row['method']}: {got:.3f} vs printed {row['delta_reported']}"


def test_nash_mtl_row_ignores_depth_rmse():
    """The issue's example: an rmse of 0.80 against an STL 0.90 must not move Nash-MTL's NYUv2 Δm (−4.05)."""
    suite, dm, metrics = _protocol("nashmtl-nyuv2")
    table = TABLES["nashmtl_nyuv2_segnet"]
    keys, _ = table_metric_keys(table, list(metrics), {})
    records, rows = _records(suite, dm, metrics, table, keys)
    nash = next(i for i, r in enumerate(rows) if r["method"] == "Nash-MTL")
    for r in records:
        for e in r["epochs"]:
            if "depth/rmse" in e["test"]:
                e["test"]["depth/rmse"] = 0.90 if r["kind"] == "stl" else 0.80
    (summary,) = summarize(records, "last")
    assert next(r for r in summary.rows if r.label == f"row{nash}").delta_m.mean == pytest.approx(-4.05, abs=0.005)
    text = build_leaderboard(records, "last", summaries=[summary])
    assert "Scored metrics (Δm, Δp, MR; 9, from dataset 'nyuv2''s declared set)" in text
    assert "`depth/rmse`" not in text.split("Scored metrics")[1].split("\n")[0]


def test_cso_gd_row_gives_cso_sign_on_pascal():
    suite, dm, metrics = _protocol("cso-pascal")
    table = TABLES["cso_t2_pascal"]
    keys, _ = table_metric_keys(table, list(metrics), REGISTRY["cso-pascal"].metrics)
    records, rows = _records(suite, dm, metrics, table, keys)
    (summary,) = summarize(records, "last")
    gd = next(i for i, r in enumerate(rows) if r["method"] == "GD")
    assert next(r for r in summary.rows if r.label == f"row{gd}").delta_m.mean == pytest.approx(1.47, abs=0.005)
    assert "| Δm% ↑ |" in build_leaderboard(records, "last", summaries=[summary])


def test_scoring_errors_name_the_field_and_value(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nmethods: [{name: ew}]\nscoring: {metrics: [semseg/miou, depth/nope]}\n")
    suite = load_suite(path)
    dm = create_datamodule(suite)
    with pytest.raises(ValueError, match=r"scoring.metrics: 'depth/nope' is not a metric of dataset"):
        suite_scoring(suite, dm)
    path.write_text("name: x\nmethods: [{name: ew}]\nscoring: {select_on: delta_q}\n")
    with pytest.raises(ValueError, match=r"scoring.select_on='delta_q'"):
        load_suite(path)
    path.write_text("name: x\nmethods: [{name: ew}]\nscoring: {metrics: [miou]}\n")
    with pytest.raises(ValueError, match=r"scoring.metrics='miou' is not a '<task>/<metric>' key"):
        load_suite(path)


def test_default_suite_scores_every_non_auxiliary_metric():
    suite = load_suite("configs/suites/default.yaml")
    dm = create_datamodule(suite)
    assert suite_scoring(suite, dm)["metrics"] == list(metric_table(dm.tasks))


def test_records_with_different_scoring_sets_are_refused():
    a = {"run_id": "a", "scoring": {"metrics": ["t/m"]}}
    b = {"run_id": "b", "scoring": {"metrics": ["t/n"]}}
    specs = [record_metric("t/m", {"direction": "lower"}), record_metric("t/n", {"direction": "lower"})]
    with pytest.raises(ValueError, match="different scoring sets"):
        record_scoring([a, b], specs)


def test_protocol_configs_name_their_best_val_score():
    import yaml

    for path in sorted(__import__("pathlib").Path("configs/protocols").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if raw.get("selection") == "best-val":
            assert (raw.get("scoring") or {}).get("select_on") in ("delta_m", "delta_p"), path
    assert load_suite("configs/protocols/libmtl_nyuv2_deeplab.yaml").scoring.select_on == "delta_p"


def _val_record(vals):
    metrics = {"a/x": {"direction": "lower"}, "b/y": {"direction": "lower"}, "b/z": {"direction": "lower"}}
    return {"run_id": "r", "metrics": metrics,
            "epochs": [{"epoch": i, "val": v, "test": v} for i, v in enumerate(vals)]}


def test_best_val_on_delta_p_differs_from_delta_m():
    """Epoch 0 is best by Δm (metric-level: b's two metrics weigh double), epoch 1 by Δp (task-level)."""
    base = {"a/x": 1.0, "b/y": 1.0, "b/z": 1.0}
    epochs = [{"a/x": 1.5, "b/y": 0.7, "b/z": 0.7}, {"a/x": 0.8, "b/y": 1.05, "b/z": 1.05}]

    def dm(v):
        return sum((v[k] - 1.0) for k in v) / 3

    def dp(v):
        return -((v["a/x"] - 1.0) + ((v["b/y"] - 1.0) + (v["b/z"] - 1.0)) / 2) / 2

    assert min(range(2), key=lambda i: dm(epochs[i])) == 0 and max(range(2), key=lambda i: dp(epochs[i])) == 1
    assert select_with_info(_val_record(epochs), "best-val", val_baseline=base)[1].epochs == (0,)
    info = select_with_info(_val_record(epochs), "best-val", val_baseline=base, select_on="delta_p")[1]
    assert info.epochs == (1,) and "Δp" in info.criterion


def test_delta_m_ci_counts_stl_variance_against_an_independent_computation():
    """Delta method with a numerical Jacobian and NumPy's covariance per STL task, the smallest sample's dof."""
    rng = np.random.default_rng(0)
    directions = {"a/x": "higher", "a/w": "lower", "b/y": "lower"}
    keys = list(directions)
    method = rng.normal([40.0, 0.5, 25.0], [1.0, 0.02, 0.5], size=(4, 3))
    stl = {"a": rng.normal([41.0, 0.52], [1.5, 0.03], size=(3, 2)), "b": rng.normal([24.0], [0.8], size=(5, 1))}
    baseline = {"a/x": stl["a"][:, 0].mean(), "a/w": stl["a"][:, 1].mean(), "b/y": stl["b"][:, 0].mean()}
    sign = np.array([-1.0, 1.0, 1.0])

    def dm(m, b):
        return 100.0 * np.mean(sign * (m - b) / b)

    bvec = np.array([baseline[k] for k in keys])
    per_seed = [dm(m, bvec) for m in method]
    means = method.mean(axis=0)
    jac = np.array([(dm(means, bvec + h) - dm(means, bvec - h)) / (2 * 1e-6)
                    for h in np.eye(3) * 1e-6])
    var_m = np.var(per_seed, ddof=1) / len(per_seed)
    parts = [(var_m, len(per_seed) - 1)]
    for idx, samples in ((slice(0, 2), stl["a"]), (slice(2, 3), stl["b"])):
        cov = np.atleast_2d(np.cov(samples, rowvar=False)) / samples.shape[0]
        parts.append((float(jac[idx] @ cov @ jac[idx]), samples.shape[0] - 1))
    total = sum(v for v, _ in parts)
    dof = min(d for v, d in parts if v > 0)
    expected = student_t.ppf(0.975, dof) * math.sqrt(total)
    stl_runs = {"a": [{"a/x": r[0], "a/w": r[1]} for r in stl["a"]], "b": [{"b/y": r[0]} for r in stl["b"]]}
    got = delta_m_ci95(per_seed, dict(zip(keys, means, strict=True)), baseline, directions, stl_runs)
    assert got == pytest.approx(expected, rel=1e-6)
    assert got > student_t.ppf(0.975, 3) * math.sqrt(var_m)
    assert delta_m_ci95(per_seed, dict(zip(keys, means, strict=True)), baseline, directions) == pytest.approx(
        student_t.ppf(0.975, 3) * math.sqrt(var_m))


def _toy(method, seed, vals, kind="mtl", stl_task=None):
    metrics = {"a/x": {"direction": "lower", "unit": "ratio"}, "b/y": {"direction": "higher", "unit": "ratio"}}
    run = f"stl-{stl_task}" if kind == "stl" else method
    return {"schema_version": 1, "run_id": f"s/toy/{run}/seed{seed}", "suite": "s", "dataset": "toy", "method": run,
            "method_label": run, "kind": kind, "stl_task": stl_task, "seed": seed,
            "tasks": [{"name": "a"}, {"name": "b"}], "metrics": {k: metrics[k] for k in vals}, "status": "finished",
            "epochs": [{"epoch": 0, "val": vals, "test": vals}]}


def test_single_seed_rows_print_no_std_and_fewer_seed_rows_are_marked_and_unranked():
    records = [_toy("ew", s, {"a/x": 1.0 + s / 10, "b/y": 2.0}) for s in (0, 1)]
    records += [_toy("pcgrad", 0, {"a/x": 0.5, "b/y": 3.0})]
    records += [_toy("x", s, {"a/x": 1.0}, "stl", "a") for s in (0, 1)]
    records += [_toy("x", s, {"b/y": 2.0 + s / 10}, "stl", "b") for s in (0, 1)]
    (summary,) = summarize(records, "last")
    assert [r.label for r in summary.rows] == ["ew", "pcgrad"]
    pc = summary.rows[1]
    assert pc.fewer_seeds and pc.mean_rank is None and summary.rows[0].mean_rank == 1.0
    text = build_leaderboard(records, "last", summaries=[summary])
    line = next(x for x in text.splitlines() if x.startswith("| pcgrad †"))
    assert "± 0.00" not in line and "±" not in line.split("|")[3]
    assert "† marks a row with fewer seeds" in text
    ew = summary.rows[0]
    per_seed = [100 * ((x - 1.0) / 1.0 - (2.0 - 2.05) / 2.05) / 2 for x in (1.0, 1.1)]
    assert ew.delta_m.mean == pytest.approx(sum(per_seed) / 2)
    plain = student_t.ppf(0.975, 1) * np.std(per_seed, ddof=1) / math.sqrt(2)
    assert ew.delta_m.ci95 > plain
    stl_runs = {"a": [{"a/x": 1.0}, {"a/x": 1.0}], "b": [{"b/y": 2.0}, {"b/y": 2.1}]}
    assert ew.delta_m.ci95 == pytest.approx(delta_m_ci95(per_seed, {"a/x": 1.05, "b/y": 2.0}, {"a/x": 1.0, "b/y": 2.05},
                                                         {"a/x": "lower", "b/y": "higher"}, stl_runs))


def test_record_metric_sets_default_to_non_auxiliary():
    specs = [RecordMetric(record_metric("a/x", {"direction": "lower"}).info, "a"),
             RecordMetric(record_metric("e/l", {"direction": "lower"}).info, "e", auxiliary=True)]
    assert record_scoring([{"run_id": "r"}], specs).metrics == ("a/x",)
