"""The training stack imports only downward: the runner never imports the commands (launch, cli), and the module,
its stats, the optimiser and the engine never import the runner or anything above it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABOVE_RUNNER = ("benchmark.launch", "benchmark.cli", "benchmark.perf", "benchmark.submit")
ABOVE_MODULE = (*ABOVE_RUNNER, "benchmark.runner", "benchmark.leaderboard", "benchmark.plots", "benchmark.report")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def upward(path: Path, above: tuple[str, ...]) -> set[str]:
    return {m for m in imports(path) if any(m == a or m.startswith(a + ".") for a in above)}


@pytest.mark.parametrize("path", sorted((ROOT / "benchmark/runner").glob("*.py")), ids=lambda p: p.name)
def test_the_runner_imports_no_command(path):
    assert not upward(path, ABOVE_RUNNER), f"{path.relative_to(ROOT)} imports upward"


@pytest.mark.parametrize("name", ["module.py", "run_stats.py", "optim.py", "engine.py"])
def test_the_module_layer_imports_nothing_above_it(name):
    path = ROOT / "benchmark" / name
    assert not upward(path, ABOVE_MODULE), f"{path.relative_to(ROOT)} imports upward"


def test_the_import_check_sees_lazy_imports(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from benchmark.launch import run\n")
    assert upward(source, ABOVE_RUNNER) == {"benchmark.launch"}
