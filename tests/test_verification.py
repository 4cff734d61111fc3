"""benchmark/protocol_verification.json: one entry per table of configs/tables.yaml, consistent with the recorded
reference data (tests/reference/<lineage>/header.json), and the line ``mtobench table`` prints from it."""

import json
from pathlib import Path

import yaml

from benchmark.verification import SUMMARY_FILE, load_summary, verification_line

ROOT = Path(__file__).resolve().parents[1]


def test_every_table_has_an_entry():
    tables = yaml.safe_load((ROOT / "configs" / "tables.yaml").read_text())["tables"]
    assert sorted(load_summary()["tables"]) == sorted(tables)


def test_verified_entries_match_their_reference_headers():
    for name, entry in load_summary()["tables"].items():
        if not entry["verified"]:
            assert entry["reason"], name
            continue
        header = json.loads((ROOT / "tests" / "reference" / entry["lineage"] / "header.json").read_text())
        assert header["repository"].endswith(entry["repository"]) and header["commit"] == entry["commit"], name
        assert 0 < entry["steps"] <= max(m["steps"] for m in header["methods"].values()), name
        assert (ROOT / entry["test"]).is_file(), name


def test_verification_line():
    line = verification_line("nashmtl-nyuv2")
    entry = load_summary(SUMMARY_FILE)["tables"]["nashmtl-nyuv2"]
    assert line.startswith(f"protocol partly verified against AvivNavon/nash-mtl@cce18403ef55: {entry['steps']} "
                           f"steps, max rel. diff {entry['max_rel_diff']:.1e}")
    assert entry["differences"] and all(f"differs from the reference: {d}" in line for d in entry["differences"])
    libmtl = verification_line("libmtl-nyuv2")
    assert libmtl.startswith("protocol partly verified against median-research-group/LibMTL@")
    assert verification_line("cso-cityscapes").startswith("protocol NOT verified: ")
    assert verification_line("no-such-table") == "protocol NOT verified: no differential test covers table " \
                                                 "'no-such-table'"


def test_an_entry_with_gaps_is_partly_verified_and_names_them(tmp_path):
    entry = {"verified": True, "lineage": "x", "repository": "o/r", "commit": "0123456789abcdef", "steps": 20,
             "max_rel_diff": 2e-6, "scope": "data, model", "test": "tests/test_x.py",
             "differences": ["MGDA weights sum to 1"], "not_verified": ["the CAGrad replay"]}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"tables": {"t": entry}}))
    load_summary.cache_clear()
    try:
        lines = verification_line("t", path).splitlines()
    finally:
        load_summary.cache_clear()
    assert lines[0].startswith("protocol partly verified against o/r@0123456789ab: 20 steps, max rel. diff 2.0e-06")
    assert lines[1:] == ["  differs from the reference: MGDA weights sum to 1", "  not verified: the CAGrad replay"]
