"""``mtobench submit``: validate a method plugin found through the ``mtobench.methods`` entry points (every check of
:mod:`benchmark.methods.checks`, each reported pass or fail), then train a suite with it added next to the built-ins
and write the leaderboard with its figures."""

from __future__ import annotations

from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path

from benchmark.config import MethodConfig, SuiteConfig
from benchmark.methods import registry
from benchmark.methods.checks import CHECKS, validate


class PluginError(ValueError):
    """A plugin that cannot be used; the message names its package and entry point."""


def describe_entry_point(name: str) -> str:
    """``entry point 'name' (module:Class) of package pkg`` for every distribution declaring ``name``."""
    found = [ep for ep in entry_points(group=registry.ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        plugins = sorted({ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)})
        raise PluginError(f"no entry point {name!r} in group {registry.ENTRY_POINT_GROUP!r}; installed plugins: "
                          f"{plugins or 'none'} (a plugin declares [project.entry-points.\"mtobench.methods\"] "
                          "in its pyproject.toml and is pip-installed)")
    return "; ".join(f"entry point {ep.name!r} ({ep.value}) of package {ep.dist.name if ep.dist else '?'}"
                     for ep in found)


def check_lines(report: dict[str, list[str]]) -> list[str]:
    """One line per check of :data:`CHECKS`, failures first: ``name: FAIL: problem; ...``, ``name: pass``, or
    ``name: skipped`` (a broken contract stops the later checks)."""

    def line(check: str) -> str:
        if check not in report:
            return f"{check}: skipped (the contract fails)"
        return f"{check}: FAIL: {'; '.join(report[check])}" if report[check] else f"{check}: pass"

    return sorted((line(check) for check in CHECKS), key=lambda text: ": FAIL: " not in text)


def validate_plugin(name: str) -> dict[str, list[str]]:
    """Load the plugin ``name`` and run every check of :mod:`benchmark.methods.checks` on it.

    Raises :class:`PluginError` (naming the package and entry point) if it clashes with a built-in, fails to
    import, or fails a check (listing every check, :func:`check_lines`); returns the (all empty) report otherwise.
    """
    where = describe_entry_point(name)
    registry.reload_plugins()
    registry.available()
    if name in registry.PLUGIN_ERRORS:
        raise PluginError(registry.PLUGIN_ERRORS[name])
    report = validate(registry.get(name))
    if any(report.values()):
        lines = "\n".join(f"  {line}" for line in check_lines(report))
        raise PluginError(f"{where} fails validation:\n{lines}")
    return report


def with_plugin(suite: SuiteConfig, name: str) -> SuiteConfig:
    """The suite with the plugin appended to its methods (unless it already lists it)."""
    if any(m.name == name for m in suite.methods):
        return suite
    return replace(suite, methods=[*suite.methods, MethodConfig(name=name)])


def submit(name: str, suite: SuiteConfig, force: bool = False, launcher: str = "none", workers: int = 1,
           validated: bool = False) -> Path:
    """Validate the plugin ``name`` (unless ``validated``), train ``suite`` with it (runs that have records are
    reused) and write the leaderboard with its figures redrawn; returns its path."""
    from benchmark.launch import run
    from benchmark.report.markdown import write_leaderboard

    if not validated:
        validate_plugin(name)
    suite = with_plugin(suite, name)
    run(suite, force=force, launcher=launcher, workers=workers)
    return write_leaderboard(Path(suite.output_dir) / suite.name, Path(suite.leaderboard), suite.selection, plot=True)
