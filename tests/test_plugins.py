"""Plugins found through the ``mtobench.methods`` entry points, their validation, and ``mtobench submit``.

Each test installs a fake distribution: a ``*.dist-info`` folder with ``entry_points.txt`` next to the plugin's
module, in a temporary folder on ``sys.path``, so ``importlib.metadata`` finds it as if pip had installed it.
"""

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.methods import available, create, get
from benchmark.methods import registry as reg
from benchmark.methods.checks import CHECKS, validate
from benchmark.methods.registry import _BUILTINS
from benchmark.report.markdown import PLUGIN_LEGEND, build_leaderboard
from benchmark.report.summary import plugin_of
from benchmark.submit import PluginError, check_lines, submit, validate_plugin
from tests.test_leaderboard import make_records
from tests.test_runner import write_suite

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "examples" / "plugin_template"

HEADER = "import torch\nfrom benchmark.methods import Method, Needs\n\n\n"
GOOD = HEADER + textwrap.dedent('''
    class Halves(Method):
        """Every loss weighted 0.5."""

        needs = Needs.LOSSES

        def __init__(self, num_tasks: int) -> None:
            super().__init__(num_tasks)

        def loss_weights(self, losses):
            self.last_weights = torch.full_like(losses, 0.5)
            return self.last_weights

        def hparams(self):
            return {}
''')
NO_HPARAMS = GOOD.replace("def __init__(self, num_tasks: int)", "def __init__(self, num_tasks: int, scale=1.0)")
GRAMIAN_CHEAT = HEADER + textwrap.dedent('''
    class Cheat(Method):
        """Declares the Gramian but reads the Jacobian's first column."""

        needs = Needs.GRAMIAN

        def __init__(self, num_tasks: int) -> None:
            super().__init__(num_tasks)

        def gramian_weights(self, gramian, losses):
            return torch.ones(gramian.shape[0], dtype=gramian.dtype)

        def aggregate(self, jacobian, losses=None):
            return jacobian.sum(0) * jacobian[:, 0].abs().sum()

        def hparams(self):
            return {}
''')
RANDOM = GOOD.replace("torch.full_like(losses, 0.5)", "torch.full_like(losses, next(COUNTER))").replace(
    "class Halves", "import itertools\nCOUNTER = itertools.count()\n\n\nclass Halves")
INVERSE_NORM = HEADER + textwrap.dedent('''
    class InverseNorm(Method):
        """Weights 1 / |g_t|^2: NaN on a zero gradient."""

        needs = Needs.GRAMIAN

        def __init__(self, num_tasks: int) -> None:
            super().__init__(num_tasks)

        def gramian_weights(self, gramian, losses):
            return 1.0 / gramian.diagonal()

        def hparams(self):
            return {}
''')


def install(tmp_path: Path, monkeypatch, package: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """A fake installed distribution ``package`` declaring ``entries`` (name -> module:Class) in the group."""
    root = tmp_path / f"site-{package}"
    info = root / f"{package.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[mtobench.methods]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(root))
    reg.reload_plugins()


@pytest.fixture(autouse=True)
def fresh_registry():
    reg.reload_plugins()
    yield
    reg.reload_plugins()


def test_a_good_plugin_is_found_next_to_the_builtins(tmp_path, monkeypatch, capsys):
    install(tmp_path, monkeypatch, "halves-pkg", {"halves": "halves_mod:Halves"}, {"halves_mod": GOOD})
    assert "halves" in available() and set(_BUILTINS) < set(available())
    assert get("halves").registry_name == "halves" and create("halves", 2).loss_weights is not None
    assert "package halves-pkg" in reg.PLUGIN_ORIGINS["halves"]
    assert validate_plugin("halves") == {"contract": [], "needs": [], "determinism": [], "adversarial": []}
    assert main(["methods"]) == 0
    assert "halves_mod" in capsys.readouterr().out


def test_a_name_clash_is_reported_and_the_builtin_wins(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "clash-pkg", {"ew": "clash_mod:Halves"}, {"clash_mod": GOOD})
    assert get("ew") is _BUILTINS["ew"]
    assert "clash-pkg" in reg.PLUGIN_ERRORS["ew"] and "clashes with the built-in" in reg.PLUGIN_ERRORS["ew"]
    with pytest.raises(PluginError, match=r"entry point 'ew' \(clash_mod:Halves\) of package clash-pkg clashes"):
        validate_plugin("ew")


def test_an_import_error_names_the_package_and_builtins_still_load(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "broken-pkg", {"broken": "broken_mod:Nope", "halves2": "halves2_mod:Halves"},
            {"broken_mod": "import not_a_module_anywhere\n", "halves2_mod": GOOD})
    assert set(_BUILTINS) | {"halves2"} == set(available())
    message = reg.PLUGIN_ERRORS["broken"]
    assert "package broken-pkg" in message and "broken_mod:Nope" in message and "not_a_module_anywhere" in message
    with pytest.raises(KeyError, match="broken-pkg"):
        get("broken")
    with pytest.raises(PluginError, match="broken-pkg.*failed to import"):
        validate_plugin("broken")


def test_a_broken_contract_names_the_package(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "nohp-pkg", {"nohp": "nohp_mod:Halves", "notamethod": "nohp_mod:HEADER"},
            {"nohp_mod": NO_HPARAMS + "\nHEADER = 1\n"})
    assert "nohp" not in available() and "ew" in available()
    assert "package nohp-pkg" in reg.PLUGIN_ERRORS["nohp"] and "hparams()" in reg.PLUGIN_ERRORS["nohp"]
    assert "not a subclass" in reg.PLUGIN_ERRORS["notamethod"]
    with pytest.raises(PluginError, match="nohp-pkg.*breaks the method contract.*scale"):
        validate_plugin("nohp")


@pytest.mark.parametrize(
    ("source", "cls", "check", "problem"),
    [
        (GRAMIAN_CHEAT, "Cheat", "needs", "depends on more than J J"),
        (RANDOM, "Halves", "determinism", "not deterministic"),
        (INVERSE_NORM, "InverseNorm", "adversarial", "'all_zero' returned a non-finite value"),
    ],
)
def test_validation_catches_each_failure(tmp_path, monkeypatch, source, cls, check, problem):
    install(tmp_path, monkeypatch, "bad-pkg", {"bad": f"bad_{check}:{cls}"}, {f"bad_{check}": source})
    report = validate(get("bad"))
    assert [k for k, v in report.items() if v] == [check] and problem in " ".join(report[check])
    failing = f"entry point 'bad' .* of package bad-pkg fails validation:\n  {check}"
    with pytest.raises(PluginError, match=failing) as err:
        validate_plugin("bad")
    lines = str(err.value).splitlines()[1:]
    assert lines[0].startswith(f"  {check}: FAIL: ") and problem in lines[0]
    assert sorted(line.split(":")[0].strip() for line in lines) == sorted(CHECKS)
    assert all(line.endswith(": pass") for line in lines[1:])


def test_submit_lists_each_check_it_ran(tmp_path, monkeypatch, capsys):
    install(tmp_path, monkeypatch, "halves-pkg", {"halves": "halves_mod5:Halves"}, {"halves_mod5": GOOD})
    assert main(["submit", "halves"]) == 0
    out = capsys.readouterr().out
    assert [line.strip() for line in out.splitlines()[1:]] == [f"{check}: pass" for check in CHECKS]
    skipped = [f"{c}: skipped (the contract fails)" for c in list(CHECKS)[1:]]
    assert check_lines({"contract": ["no hparams"]}) == ["contract: FAIL: no hparams", *skipped]


def test_plugin_rows_name_their_package_and_version():
    record = {"method_origin": "entry point 'halves' (halves_mod:Halves) of package halves-pkg",
              "versions": {"halves-pkg": "0.1", "torch": "2"}}
    assert plugin_of(record) == "halves-pkg 0.1"
    assert plugin_of({**record, "versions": {}}) == "halves-pkg (version not recorded)"
    assert plugin_of({"method_origin": "built-in"}) is None and plugin_of({}) is None
    records = make_records()
    for r in records:
        if r["method"] == "pcgrad":
            r.update(record)
    board = build_leaderboard(records)
    assert "| pcgrad (plugin halves-pkg 0.1) | 2 |" in board and "| ew | 2 |" in board
    assert PLUGIN_LEGEND in board and PLUGIN_LEGEND not in build_leaderboard(make_records())


@pytest.mark.parametrize("name", sorted(_BUILTINS))
def test_every_builtin_passes_the_plugin_checks(name):
    assert not any(validate(_BUILTINS[name]).values()), validate(_BUILTINS[name])


def test_unknown_entry_point_lists_the_installed_plugins(tmp_path, monkeypatch, capsys):
    install(tmp_path, monkeypatch, "halves-pkg", {"halves": "halves_mod3:Halves"}, {"halves_mod3": GOOD})
    assert main(["submit", "nope"]) == 1
    out = capsys.readouterr().err  # errors go to stderr (issue 17)
    assert "no entry point 'nope'" in out and "halves" in out


def test_submit_runs_the_plugin_next_to_the_builtins(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "halves-pkg", {"halves": "halves_mod4:Halves"}, {"halves_mod4": GOOD})
    suite = load_suite(write_suite(tmp_path, "[{name: ew}]"), ["--suite.seeds", "[0]", "--suite.train.epochs", "1"])
    out = submit("halves", suite)
    board = out.read_text()
    assert "| halves (plugin halves-pkg " in board and "| ew |" in board and "Δm" in board
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", board.split("## Figures", 1)[1])
    assert figures and all((out.parent / name).stat().st_size > 0 for name in figures)
    record = json.loads((tmp_path / "runs" / "tiny" / "synthetic_scenes" / "halves" / "seed0.json").read_text())
    assert "package halves-pkg" in record["method_origin"] and record["method_hparams"] == {}
    ew = json.loads((tmp_path / "runs" / "tiny" / "synthetic_scenes" / "ew" / "seed0.json").read_text())
    assert ew["method_origin"] == "built-in"


def test_the_template_installs_validates_and_passes_its_own_tests(tmp_path, monkeypatch):
    project = tomllib.loads((TEMPLATE / "pyproject.toml").read_text())
    entries = project["project"]["entry-points"]["mtobench.methods"]
    assert entries == {"gls": "mtobench_gls.gls:GLS"}
    install(tmp_path, monkeypatch, project["project"]["name"], entries, {})
    monkeypatch.syspath_prepend(str(TEMPLATE))
    assert validate_plugin("gls")["adversarial"] == []
    assert "mtobench-gls" in reg.PLUGIN_ORIGINS["gls"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEMPLATE / "tests")],
                            cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": f"{TEMPLATE}:{ROOT}",
                                                                          "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout
