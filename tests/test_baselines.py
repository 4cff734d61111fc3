"""Versioned STL baselines: published (reference_tables.yaml, with source) or measured; the table says which."""

import pytest

from benchmark.config import load_suite
from benchmark.report.baselines import match_metrics, published_baseline, published_ids
from benchmark.report.markdown import build_leaderboard
from benchmark.report.summary import summarize
from tests.test_leaderboard import make_records
from tests.test_runner import write_suite

REFERENCE = """
baselines:
  stl_toy: &stl_toy {miou: 40.0, abs_err: 0.5}
tables:
  - id: toy_table
    title: "Toy paper, Table 1"
    baseline: {method: STL, source: "toy paper, Table 1, STL row", values: *stl_toy}
    rows: []
  - id: other_table
    title: "Other paper"
    baseline: {method: Independent, values: {miou: 30.0}}
    rows: []
"""


@pytest.fixture
def reference(tmp_path, monkeypatch):
    path = tmp_path / "reference_tables.yaml"
    path.write_text(REFERENCE)
    monkeypatch.setenv("MTOBENCH_SHARED", str(path))
    return path


def published(records, baseline_id):
    for r in records:
        r["config"] = {"stl_baseline": baseline_id}
    return records


def test_published_baselines_of_the_bundled_tables():
    famo = published_baseline("stl_cityscapes_segnet")
    assert famo.values == {"miou": 74.01, "pix_acc": 93.16, "abs_err": 0.0125, "rel_err": 27.77}
    assert "Cranial-XIX/FAMO" in famo.source
    recon = published_baseline("cso_t3_cityscapes")
    assert recon.values["miou"] == 74.36 and "Recon" in recon.source
    assert {"stl_nyuv2_segnet", "cso_t1_nyud", "nashmtl_nyuv2_segnet"} <= set(published_ids())
    with pytest.raises(KeyError, match="'nope' is neither 'measured' nor a published baseline.*stl_nyuv2_segnet"):
        published_baseline("nope")


def test_match_metrics_on_the_metric_name():
    matched, unmatched = match_metrics({"miou": 40.0, "rmse": 1.0}, ["semseg/miou", "depth/abs_err"])
    assert matched == {"semseg/miou": 40.0} and unmatched == ["depth/abs_err"]
    with pytest.raises(ValueError, match="several record metrics"):
        match_metrics({"mean": 1.0}, ["a/mean", "b/mean"])


def test_leaderboard_uses_the_published_baseline_and_names_it(reference):
    records = published(make_records(), "stl_toy")
    (summary,) = summarize(records)
    assert summary.baseline == {"semseg/miou": 40.0, "depth/abs_err": 0.5}
    ew = next(r for r in summary.rows if r.label == "ew")
    per_seed = [100 * ((40.0 - 38.0) / 40.0 + (0.62 - 0.5) / 0.5) / 2,
                100 * ((40.0 - 39.0) / 40.0 + (0.60 - 0.5) / 0.5) / 2]
    assert ew.delta_m.mean == pytest.approx(sum(per_seed) / 2)
    board = build_leaderboard(records)
    assert "STL baseline: published `stl_toy` (toy paper, Table 1, STL row; reference_tables.yaml)" in board
    assert "left out of Δm: normal/mean" in board and "own STL runs are listed below" in board
    (measured,) = summarize(make_records())
    assert measured.baseline_source == "measured" and measured.baseline["semseg/miou"] == 41.0
    assert "STL baseline: measured by this suite" in build_leaderboard(make_records())


def test_a_table_baseline_without_a_source_names_the_table(reference):
    (summary,) = summarize(published(make_records(), "other_table"))
    assert summary.baseline_source.startswith("published `other_table` (Other paper, row 'Independent'")
    assert [r.delta_m is not None for r in summary.rows] == [True] * 3


def test_records_with_different_baselines_are_an_error(reference):
    records = published(make_records(), "stl_toy")
    records[0]["config"] = {"stl_baseline": "measured"}
    with pytest.raises(ValueError, match="different stl_baseline values"):
        summarize(records)


def test_suite_field_is_checked(tmp_path, reference):
    assert load_suite(write_suite(tmp_path), ["--suite.stl_baseline", "stl_toy"]).stl_baseline == "stl_toy"
    with pytest.raises(ValueError, match="suite.yaml: stl_baseline='stl_typo'.*known: \\['other_table', 'stl_toy'"):
        load_suite(write_suite(tmp_path), ["--suite.stl_baseline", "stl_typo"])
