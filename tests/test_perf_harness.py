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



def test_overhead_compares_the_library_defaults_with_the_suite_and_replaces_its_own_section(tmp_path):
    from benchmark.config import load_suite
    from benchmark.perf import overhead

    suite = load_suite("configs/suites/default.yaml")
    before, after = overhead.settings(suite).values()
    assert after is suite and before.train.eval_every_n_epochs == 1 and before.train.checkpoint_every_n_epochs == 1
    assert before.train.jacobian_mode == "auto" and before.logging.log_every_n_steps == 10
    assert before.train.epochs == suite.train.epochs and before.methods == suite.methods
    assert "train.eval_every_n_epochs: 1 → 8" in overhead.changed(suite)
    page = tmp_path / "perf.md"
    page.write_text("# perf\n\nother table\n")
    overhead.replace_section(page, f"{overhead.BEGIN}\nfirst\n{overhead.END}\n")
    overhead.replace_section(page, f"{overhead.BEGIN}\nsecond\n{overhead.END}\n")
    text = page.read_text()
    assert text.startswith("# perf\n\nother table\n") and "second" in text and "first" not in text
    assert text.count(overhead.BEGIN) == 1
