"""The step-time benchmark runs end to end and reports ratios, including the reference-library rows."""

import importlib.util

import pytest

from benchmark.perf import step_time


@pytest.fixture
def tiny_size(monkeypatch):
    monkeypatch.setattr(step_time, "SIZES", {"tiny": {"width": 4, "levels": 2, "height": 16, "image_width": 16,
                                                      "batch": 2}})


def test_step_time_writes_ratio_table(tmp_path, tiny_size):
    out = tmp_path / "perf.md"
    assert step_time.main(["--out", str(out), "--sizes", "tiny", "--methods", "ew", "pcgrad", "imtl_h",
                           "--rounds", "1"]) == 0
    text = out.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert {"ew", "pcgrad", "imtl_h", "fwd+T·bwd"} <= set(rows)
    assert rows["ew"].split("|")[3].strip() == "1.00"
    if importlib.util.find_spec("LibMTL") is not None:
        assert "libmtl:PCGrad" in rows and "libmtl:IMTL" in rows
        assert rows["pcgrad"].split("|")[6].strip() != ""

