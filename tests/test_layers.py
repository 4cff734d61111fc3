"""The import graph of ``benchmark``, ``models`` and ``datamodules`` has no cycle and no upward edge.

Layers (imports only point down): 4 the commands (cli, launch, perf, submit) -> 3 orchestration and reports
(runner / plan / train / suite, report, sweep) -> 2 the training step, records and scoring
(module, engine, tasks, records, scoring, ...) -> 1 methods, models, datamodules. A module may import its own
layer or a lower one. Imports are read with ``ast`` from the source, function-local ones included, so the test needs
no optional dependency and imports nothing it checks.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "models", "datamodules")

# Module-name patterns per layer (fnmatch: ``*`` also matches dots). Every module must match exactly one.
LAYERS: dict[int, tuple[str, ...]] = {
    1: (
        "benchmark",
        "benchmark.names",
        "benchmark.methods",
        "benchmark.methods.*",
        "models",
        "models.*",
        "datamodules",
        "datamodules.*",
    ),
    2: (
        "benchmark.module",
        "benchmark.engine",
        "benchmark.tasks",
        "benchmark.tasks.*",
        "benchmark.dense_tasks",
        "benchmark.image_tasks",
        "benchmark.records",
        "benchmark.scoring",
        "benchmark.distributed",
        "benchmark.checkpointing",
        "benchmark.optim",
        "benchmark.grad_stats",
        "benchmark.run_log",
        "benchmark.run_stats",
        "benchmark.wandb_log",
    ),
    3: (
        "benchmark.config",
        "benchmark.catalog",
        "benchmark.runner",
        "benchmark.runner.*",
        "benchmark.grid",
        "benchmark.verification",
        "benchmark.train",
        "benchmark.suite",
        "benchmark.report",
        "benchmark.report.*",
        "benchmark.sweep",
    ),
    4: (
        "benchmark.cli",
        "benchmark.quick_suite",
        "benchmark.launch",
        "benchmark.perf",
        "benchmark.perf.*",
        "benchmark.submit",
    ),
}

# Import edges (importer, imported) that break the rules today and are being removed by the refactors of
# issue 11. Each is exempt from both checks below. Empty this set as the refactors land; the last test
# fails when an entry no longer exists, so a stale exemption cannot hide a new violation.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


def discover_modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (source file, is a package ``__init__``) for every module of ``PACKAGES``."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            modules[".".join(parts)] = (path, is_package)
    return modules


def _owner(name: str, modules: dict) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``a.b.func`` -> ``a.b``), or None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Absolute dotted names an import statement refers to (``from p import x`` gives ``p.x``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = (module if is_package else module.rpartition(".")[0]).split(".")
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [f"{source}.{alias.name}" for alias in node.names]


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """module -> the set of our modules it imports anywhere in its source (nested imports included)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for imported in _imported_names(node, name, is_package):
                    target = _owner(imported, modules)
                    if target is not None and target != name:
                        graph[name].add(target)
    return graph


def layer_of(module: str) -> list[int]:
    return [layer for layer, patterns in LAYERS.items() if any(fnmatchcase(module, p) for p in patterns)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(discover_modules())


def _without_known(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in targets if (m, t) not in KNOWN_VIOLATIONS} for m, targets in graph.items()}


def test_the_graph_sees_the_known_modules(graph):
    assert {"benchmark.cli", "benchmark.module", "benchmark.methods.pcgrad", "models.segnet"} <= set(graph)
    assert "benchmark.module" in graph["benchmark.runner.train"]
    assert "benchmark.methods.base" in graph["benchmark.engine"]


def test_every_module_has_exactly_one_layer(graph):
    bad = {m: layer_of(m) for m in graph if len(layer_of(m)) != 1}
    assert not bad, (
        "modules with no layer ([]) or several layers; add each deliberately to LAYERS in tests/test_layers.py: "
        + ", ".join(f"{m} {layers}" for m, layers in sorted(bad.items()))
    )


def test_no_upward_import(graph):
    upward = sorted(
        f"{m} (layer {layer_of(m)[0]}) imports {t} (layer {layer_of(t)[0]})"
        for m, targets in _without_known(graph).items()
        for t in targets
        if len(layer_of(m)) == 1 and len(layer_of(t)) == 1 and layer_of(t)[0] > layer_of(m)[0]
    )
    assert not upward, "upward imports:\n  " + "\n  ".join(upward)


def test_no_import_cycle(graph):
    pruned = _without_known(graph)
    found = cycles(pruned)
    described = [
        " <-> ".join(c) + ": " + ", ".join(f"{m} -> {t}" for m in c for t in sorted(pruned[m]) if t in c)
        for c in found
    ]
    assert not found, "import cycles:\n  " + "\n  ".join(described)


def test_known_violations_still_exist(graph):
    stale = sorted(f"{m} -> {t}" for m, t in KNOWN_VIOLATIONS if t not in graph.get(m, set()))
    assert not stale, "these imports are gone; remove them from KNOWN_VIOLATIONS: " + ", ".join(stale)


def test_the_cycle_finder_finds_a_cycle():
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(toy) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
