"""What the differential tests proved about each paper protocol (``tests/test_reference_*.py``).

``benchmark/protocol_verification.json`` is the shipped summary of those tests' recorded reference runs
(``tests/reference/<lineage>/header.json`` holds the full provenance): per ``configs/tables.yaml`` name, the
reference repository and commit, how many steps of which methods were replayed and the largest relative
difference seen, or why the protocol is not verified. README "Paper tables" says what this does and does not
prove.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

SUMMARY_FILE = Path(__file__).with_name("protocol_verification.json")


@lru_cache(maxsize=1)
def load_summary(path: Path = SUMMARY_FILE) -> dict:
    data = json.loads(Path(path).read_text())
    for name, entry in data["tables"].items():
        if "verified" not in entry:
            raise ValueError(f"{path}: tables.{name} has no 'verified' field")
    return data


def verification_line(table: str, path: Path = SUMMARY_FILE) -> str:
    """One line for ``mtobench table <table>``: "protocol verified against <repo>@<commit>: N steps, max rel.
    diff X" with the stated differences, "protocol partly verified ..." when the entry lists parts it does not
    cover (``not_verified``), or "protocol NOT verified: <why>"."""
    entry = load_summary(path)["tables"].get(table)
    if entry is None:
        return f"protocol NOT verified: no differential test covers table {table!r}"
    if not entry["verified"]:
        return f"protocol NOT verified: {entry['reason']}"
    gaps = entry.get("not_verified", [])
    line = (f"protocol {'partly ' if gaps else ''}verified against {entry['repository']}@{entry['commit'][:12]}: "
            f"{entry['steps']} steps, max rel. diff {entry['max_rel_diff']:.1e} ({entry['scope']}; {entry['test']})")
    for diff in entry.get("differences", []):
        line += f"\n  differs from the reference: {diff}"
    for gap in gaps:
        line += f"\n  not verified: {gap}"
    return line
