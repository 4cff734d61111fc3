"""The shipped ``leaderboard.md`` (and its figures) must be built from the default suite as it is now: regenerate
them with ``make benchmark`` after changing ``configs/suites/default.yaml`` or a suite default."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from benchmark.config import load_suite
from benchmark.report.markdown import build_leaderboard, config_fingerprint, config_fingerprints
from tests.test_leaderboard import make_records

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "leaderboard.md"
DEFAULT = ROOT / "configs" / "suites" / "default.yaml"
REGENERATE = "regenerate the shipped leaderboard and figures: make benchmark"


def test_the_header_names_each_suites_config_fingerprints():
    records = make_records()
    for r in records:
        r["config"] = {"name": r["suite"], "seeds": [0, 1]}
    records[0]["config"] = {"name": "default", "seeds": [0]}
    board = build_leaderboard(records)
    assert config_fingerprints(board) == {"default": sorted([config_fingerprint({"name": "default", "seeds": [0]}),
                                                             config_fingerprint({"seeds": [0, 1], "name": "default"})])}
    assert config_fingerprints(build_leaderboard(make_records())) == {}


def test_a_board_regenerated_from_the_default_suite_names_its_fingerprint():
    """What a run records (``suite.to_dict()``, through JSON) fingerprints as the suite file does."""
    suite = load_suite(DEFAULT)
    records = make_records()
    for r in records:
        r["suite"], r["config"] = suite.name, json.loads(json.dumps(suite.to_dict()))
    assert config_fingerprints(build_leaderboard(records)) == {suite.name: [config_fingerprint(suite.to_dict())]}


def test_the_shipped_leaderboard_is_built_from_the_current_default_suite():
    suite = load_suite(DEFAULT)
    board = BOARD.read_text()
    found, expected = config_fingerprints(board).get(suite.name), config_fingerprint(suite.to_dict())
    assert found == [expected], (f"{BOARD.name} names config(s) {found} of suite {suite.name!r}, not {expected} of "
                                 f"{DEFAULT.relative_to(ROOT)} as it is now; {REGENERATE}")
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", board)
    assert linked and all((BOARD.parent / name).is_file() for name in linked), REGENERATE


def test_the_shipped_leaderboard_is_no_older_than_the_default_suites_last_commit():
    """Where git history is at hand (a clone, not an sdist), every commit the leaderboard was built at descends
    from the commit that gave the default suite its current settings (a change of its comments alone does not
    count)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)

    path = str(DEFAULT.relative_to(ROOT))
    current = yaml.safe_load(DEFAULT.read_text())
    changed = None
    for commit in git("log", "--format=%H", "--", path).stdout.split():
        before = git("show", f"{commit}^:{path}")
        if before.returncode != 0 or yaml.safe_load(before.stdout) != current:
            changed = commit
            break
    header = next(line for line in BOARD.read_text().splitlines() if line.startswith("Built from"))
    commits = re.findall(r"`([0-9a-f]{7,40})(?: \(dirty\))?`", header.split("git commit", 1)[1].split(";")[0])
    assert commits, f"{BOARD.name}: no git commit in its header {header!r}; {REGENERATE}"
    if changed is None:
        return
    for commit in commits:
        assert git("merge-base", "--is-ancestor", changed, commit).returncode == 0, \
            f"{BOARD.name} was built at {commit}, before {DEFAULT.name} last changed; {REGENERATE}"
