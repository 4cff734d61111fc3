"""Δm, Δp, mean rank, selection rules and seed statistics, checked against hand computations and the
published reference tables (``benchmark/reference_tables.yaml``)."""

from __future__ import annotations

import math

import pytest

from benchmark.scoring import (
    BUNDLED_REFERENCE_TABLES,
    SELECTION_RULES,
    SHARED_ENV,
    aggregate_seeds,
    ci95_half_width,
    default_reference_path,
    delta_m,
    delta_p,
    load_reference_tables,
    mean_rank,
    recompute_table,
    seed_mean,
    seed_std,
    select,
    select_with_info,
    shared_reference_path,
)

TOL_DELTA = 0.02
TOL_MR = 0.01
NASH_TABLES = ("nashmtl_nyuv2_segnet", "nashmtl_cityscapes_segnet")


@pytest.fixture(scope="module")
def tables():
    return load_reference_tables(default_reference_path())


def test_bundled_reference_tables_match_the_shared_ones():
    shared = shared_reference_path()
    if not shared.is_file():
        pytest.skip(f"no shared research folder at {shared}; the bundled copy is used alone")
    assert BUNDLED_REFERENCE_TABLES.read_bytes() == shared.read_bytes(), (
        f"{BUNDLED_REFERENCE_TABLES} differs from {shared}: copy the shared file over it")


def _directions(table):
    return {m["key"]: m["direction"] for m in table["metrics"]}


@pytest.mark.parametrize("table_id", NASH_TABLES)
def test_delta_m_reproduces_nashmtl_recomputed(tables, table_id):
    table = tables[table_id]
    baseline = table["baseline"]["values"]
    for row in table["rows"]:
        got = delta_m(row["values"], baseline, _directions(table))
        assert got == pytest.approx(row["delta_recomputed"], abs=TOL_DELTA), row["method"]


def test_imtl_g_nyuv2_reported_value_is_flagged(tables):
    rows = recompute_table(tables["nashmtl_nyuv2_segnet"], tolerance=TOL_DELTA)
    assert {r["method"] for r in rows if r["flagged"]} == {"IMTL-G"}
    imtl = next(r for r in rows if r["method"] == "IMTL-G")
    assert not imtl["explained_by_rounding"]
    assert abs(imtl["delta_diff"]) > TOL_DELTA


def test_cityscapes_differences_are_within_absErr_rounding(tables):
    rows = recompute_table(tables["nashmtl_cityscapes_segnet"], tolerance=TOL_DELTA)
    assert any(r["flagged"] for r in rows)
    assert all(r["explained_by_rounding"] for r in rows)


def _rows_with_a_tie(table):
    tied = set()
    for key in _directions(table):
        column = [r["values"][key] for r in table["rows"]]
        tied |= {r["method"] for r in table["rows"] if column.count(r["values"][key]) > 1}
    return tied


@pytest.mark.parametrize("table_id", NASH_TABLES)
def test_mean_rank_matches_listed_mr(tables, table_id):
    table = tables[table_id]
    by_method = {r["method"]: r["values"] for r in table["rows"]}
    listed = {r["method"]: r["mr_recomputed"] for r in table["rows"] if r.get("mr_recomputed") is not None}
    assert listed
    competition = mean_rank(by_method, _directions(table), ties="min")
    average = mean_rank(by_method, _directions(table))
    tied = _rows_with_a_tie(table)
    for method, mr in listed.items():
        assert competition[method] == pytest.approx(mr, abs=TOL_MR), method
        if method not in tied:
            assert average[method] == pytest.approx(mr, abs=TOL_MR), method
        else:
            assert average[method] > competition[method]


def test_recompute_table_mr_and_delta_agree_with_listed(tables):
    for row in recompute_table(tables["nashmtl_nyuv2_segnet"]):
        assert row["mr"] == pytest.approx(row["mr_recomputed_listed"], abs=TOL_MR)
        assert row["delta"] == pytest.approx(row["delta_recomputed_listed"], abs=TOL_DELTA)


def test_every_listed_recomputation_is_reproduced(tables):
    checked = 0
    for table in tables.values():
        for row in recompute_table(table):
            if row["delta"] is not None and row["delta_recomputed_listed"] is not None:
                assert row["delta"] == pytest.approx(row["delta_recomputed_listed"], abs=TOL_DELTA), (
                    table["id"],
                    row["method"],
                )
                checked += 1
    assert checked >= 22


def test_delta_p_reproduces_dbmtl_nyuv2_ew(tables):
    table = tables.get("dbmtl_nyuv2_deeplab")
    if table is None or not table.get("delta") or "task_groups" not in table["delta"]:
        pytest.skip("dbmtl_nyuv2_deeplab lacks the fields needed for Δp")
    ew = next(r for r in table["rows"] if r["method"] == "EW")
    got = delta_p(
        ew["values"], table["baseline"]["values"], _directions(table), table["delta"]["task_groups"]
    )
    assert got == pytest.approx(ew["delta_reported"], abs=0.01)
    assert got == pytest.approx(ew["delta_recomputed"], abs=0.01)


def test_missing_reference_file_names_path_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    assert default_reference_path() == tmp_path / "research" / "reference_tables.yaml"
    with pytest.raises(FileNotFoundError, match=SHARED_ENV) as err:
        load_reference_tables()
    assert str(tmp_path) in str(err.value)


def test_env_var_may_name_the_yaml_file(tmp_path, monkeypatch):
    path = tmp_path / "refs.yaml"
    path.write_text("tables:\n  - {id: t, rows: []}\n")
    monkeypatch.setenv(SHARED_ENV, str(path))
    assert list(load_reference_tables()) == ["t"]


DIRS = {"a": "higher", "b": "lower"}
BASE = {"a": 10.0, "b": 10.0}


def test_delta_m_hand_computed():
    assert delta_m({"a": 11.0, "b": 9.0}, BASE, DIRS) == pytest.approx(-10.0)
    assert delta_m({"a": 12.0, "b": 11.0}, BASE, DIRS) == pytest.approx(-5.0)
    assert delta_m({"a": 8.0, "b": 12.5}, BASE, DIRS) == pytest.approx(22.5)
    assert delta_m(BASE, BASE, DIRS) == 0.0


def test_delta_m_ignores_metrics_without_direction():
    assert delta_m({"a": 11.0, "b": 9.0, "extra": 1e9}, BASE, DIRS) == pytest.approx(-10.0)


def test_delta_m_errors_name_the_key():
    with pytest.raises(KeyError, match="'b'"):
        delta_m({"a": 1.0}, BASE, DIRS)
    with pytest.raises(KeyError, match="'b'.*baseline"):
        delta_m({"a": 1.0, "b": 1.0}, {"a": 1.0}, DIRS)
    with pytest.raises(ValueError, match="'b'.*0"):
        delta_m({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 0.0}, DIRS)
    with pytest.raises(ValueError, match="sideways"):
        delta_m(BASE, BASE, {"a": "sideways"})


def test_delta_m_nan_propagates():
    assert math.isnan(delta_m({"a": math.nan, "b": 10.0}, BASE, DIRS))


def test_delta_p_hand_computed_averages_within_then_across_tasks():
    dirs = {"a": "higher", "b": "lower", "c": "lower"}
    values = {"a": 12.0, "b": 11.0, "c": 8.0}
    base = {"a": 10.0, "b": 10.0, "c": 10.0}
    assert delta_p(values, base, dirs, {"t1": ["a", "b"], "t2": ["c"]}) == pytest.approx(12.5)
    assert delta_m(values, base, dirs) == pytest.approx(-10.0)
    assert delta_p(values, base, dirs, {"t": ["a", "b", "c"]}) == pytest.approx(-delta_m(values, base, dirs))


def test_delta_p_errors():
    with pytest.raises(KeyError, match="'z'"):
        delta_p(BASE, BASE, DIRS, {"t": ["a", "z"]})
    with pytest.raises(ValueError, match="no metrics"):
        delta_p(BASE, BASE, DIRS, {"t": []})


def test_mean_rank_hand_computed_with_ties():
    table = {"A": {"x": 1.0, "y": 2.0}, "B": {"x": 1.0, "y": 1.0}, "C": {"x": 0.0, "y": 3.0}}
    dirs = {"x": "higher", "y": "lower"}
    assert mean_rank(table, dirs) == pytest.approx({"A": 1.75, "B": 1.25, "C": 3.0})
    assert mean_rank(table, dirs, ties="min") == pytest.approx({"A": 1.5, "B": 1.0, "C": 3.0})


def test_mean_rank_nan_ranks_last():
    dirs = {"x": "lower"}
    assert mean_rank({"A": {"x": math.nan}, "B": {"x": 1.0}, "C": {"x": 2.0}}, dirs) == {
        "A": 3.0,
        "B": 1.0,
        "C": 2.0,
    }
    two_nan = mean_rank({"A": {"x": math.nan}, "B": {"x": math.nan}, "C": {"x": 5.0}}, dirs)
    assert two_nan == {"A": 2.5, "B": 2.5, "C": 1.0}
    higher = mean_rank({"A": {"x": math.nan}, "B": {"x": -1.0}}, {"x": "higher"})
    assert higher == {"A": 2.0, "B": 1.0}


def test_mean_rank_missing_value_is_an_error():
    with pytest.raises(KeyError, match="'B'.*'y'"):
        mean_rank({"A": {"x": 1.0, "y": 1.0}, "B": {"x": 1.0}}, {"x": "lower", "y": "lower"})


def test_seed_statistics():
    assert seed_mean([1.0, 2.0, 3.0]) == 2.0
    assert seed_std([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert ci95_half_width([1.0, 2.0, 3.0]) == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert seed_std([5.0]) == 0.0
    assert math.isnan(ci95_half_width([5.0]))
    stats = aggregate_seeds([{"m": 1.0}, {"m": 3.0}])["m"]
    assert (stats.mean, stats.n) == (2.0, 2)
    assert stats.std == pytest.approx(math.sqrt(2.0))
    with pytest.raises(KeyError):
        aggregate_seeds([{"m": 1.0}, {"n": 1.0}])


def _record(n_epochs, val_loss=None, val=None):
    epochs = []
    for e in range(n_epochs):
        epochs.append(
            {
                "epoch": e,
                "step": 10 * (e + 1),
                "val": val[e] if val else {"t/acc": float(e), "t/err": float(e)},
                "val_loss": val_loss[e] if val_loss else float(n_epochs - e),
                "test": {"t/acc": float(e), "t/err": 100.0 + e},
            }
        )
    return {
        "run_id": "s/d/m/seed0",
        "metrics": {"t/acc": {"direction": "higher"}, "t/err": {"direction": "lower"}},
        "epochs": list(reversed(epochs)),
    }


def test_select_last():
    assert select(_record(14), "last") == {"t/acc": 13.0, "t/err": 113.0}
    assert select(_record(14), "last", split="val") == {"t/acc": 13.0, "t/err": 13.0}


def test_select_last10_with_more_than_ten_epochs():
    values, info = select_with_info(_record(14), "last10")
    assert values == pytest.approx({"t/acc": 8.5, "t/err": 108.5})
    assert info.epochs == tuple(range(4, 14))
    assert info.note is None


def test_select_last10_with_fewer_epochs_says_so():
    values, info = select_with_info(_record(4), "last10")
    assert values == pytest.approx({"t/acc": 1.5, "t/err": 101.5})
    assert info.epochs == (0, 1, 2, 3)
    assert "4 epochs" in info.note


def test_select_best_val_by_summed_val_loss():
    losses = [5.0, 3.0, {"t": 0.5, "u": 0.5}, math.nan, 2.0]
    values, info = select_with_info(_record(5, val_loss=losses), "best-val")
    assert info.epochs == (2,)
    assert values == {"t/acc": 2.0, "t/err": 102.0}
    assert "val loss" in info.criterion


def test_select_best_val_by_val_delta_m_against_baseline():
    val = [{"t/acc": 10.0, "t/err": 10.0}, {"t/acc": 14.0, "t/err": 10.0}, {"t/acc": 12.0, "t/err": 7.0}]
    record = _record(3, val_loss=[9.0, 1.0, 5.0], val=val)
    baseline = {"t/acc": 10.0, "t/err": 10.0}
    assert select(record, "best-val") == {"t/acc": 1.0, "t/err": 101.0}
    values, info = select_with_info(record, "best-val", val_baseline=baseline)
    assert info.epochs == (2,)
    assert values == {"t/acc": 2.0, "t/err": 102.0}
    assert "Δm" in info.criterion


def test_select_unknown_rule_lists_valid_rules():
    with pytest.raises(ValueError) as err:
        select(_record(2), "best-test")
    for rule in SELECTION_RULES:
        assert rule in str(err.value)


def test_select_rejects_empty_and_duplicated_epochs():
    with pytest.raises(ValueError, match="no epochs"):
        select({"run_id": "r", "epochs": []}, "last")
    record = _record(2)
    record["epochs"].append(record["epochs"][0])
    with pytest.raises(ValueError, match="more than once"):
        select(record, "last")


def test_null_values_from_json_count_as_nan():
    record = _record(3, val_loss=[2.0, None, 1.0])
    record["epochs"][0]["test"]["t/acc"] = None
    assert math.isnan(select(record, "last10")["t/acc"])
    assert select_with_info(record, "best-val")[1].epochs == (2,)
    assert math.isnan(delta_m({"a": None, "b": 1.0}, BASE, DIRS))
    assert mean_rank({"A": {"x": None}, "B": {"x": 0.0}}, {"x": "lower"}) == {"A": 2.0, "B": 1.0}
