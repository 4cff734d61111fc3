"""Method registry: built-ins register with ``@register``; plugins through the ``mtobench.methods`` entry points."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import entry_points

from benchmark.methods.base import Method
from benchmark.methods.checks import check_contract
from benchmark.names import unknown_name

ENTRY_POINT_GROUP = "mtobench.methods"
_BUILTINS: dict[str, type[Method]] = {}
_PLUGINS: dict[str, type[Method]] | None = None
PLUGIN_ERRORS: dict[str, str] = {}
PLUGIN_ORIGINS: dict[str, str] = {}
"""Where each loaded plugin came from: ``entry point 'name' (module:Class) of package pkg``."""


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator adding a built-in method under ``name``."""

    def add(cls: type[Method]) -> type[Method]:
        if name in _BUILTINS:
            raise ValueError(f"method {name!r} registered twice ({_BUILTINS[name].__module__}, {cls.__module__})")
        if not (inspect.isclass(cls) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) expects a Method subclass, got {cls!r}")
        cls.registry_name = name
        _BUILTINS[name] = cls
        return cls

    return add


def _plugins() -> dict[str, type[Method]]:
    """Methods found through the entry-point group; a broken plugin is reported, never fatal to built-ins."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            where = f"entry point {ep.name!r} ({ep.value}) of package {ep.dist.name if ep.dist else '?'}"
            if ep.name in _BUILTINS:
                PLUGIN_ERRORS[ep.name] = f"{where} clashes with the built-in method of that name"
                continue
            try:
                cls = ep.load()
            except Exception as exc:  # noqa: BLE001 - any plugin failure is reported, not raised
                PLUGIN_ERRORS[ep.name] = f"{where} failed to import: {exc!r}"
                continue
            broken = check_contract(cls)
            if broken:
                PLUGIN_ERRORS[ep.name] = f"{where} breaks the method contract: {'; '.join(broken)}"
                continue
            cls.registry_name = ep.name
            _PLUGINS[ep.name] = cls
            PLUGIN_ORIGINS[ep.name] = where
    return _PLUGINS


def builtin_clash(name: str) -> str | None:
    """If a plugin's entry point is also called ``name`` like a built-in: both origins, else None."""
    _plugins()
    why = PLUGIN_ERRORS.get(name)
    if name not in _BUILTINS or why is None or "clashes with the built-in" not in why:
        return None
    return f"{why} (built-in: {_BUILTINS[name].__module__}.{_BUILTINS[name].__qualname__})"


def reload_plugins() -> None:
    """Forget the loaded plugins, so the next lookup scans the entry points again (after an install)."""
    global _PLUGINS
    _PLUGINS = None
    PLUGIN_ERRORS.clear()
    PLUGIN_ORIGINS.clear()


def available() -> list[str]:
    """Names of every built-in and plugin method, sorted."""
    return sorted({**_BUILTINS, **_plugins()})


def get(name: str) -> type[Method]:
    """The class registered as ``name``; an unknown name lists the nearest matches."""
    methods = {**_plugins(), **_BUILTINS}
    if name in methods:
        return methods[name]
    if name in PLUGIN_ERRORS:
        raise KeyError(f"method {name!r} could not be loaded: {PLUGIN_ERRORS[name]}")
    raise unknown_name("method", name, methods, f"built-ins plus entry-point group {ENTRY_POINT_GROUP!r}")


def create(name: str, num_tasks: int, **hparams) -> Method:
    """Build the method ``name`` for ``num_tasks`` tasks; unknown hyper-parameters are named in the error."""
    cls = get(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise TypeError(
            f"method {name!r} got unknown hyper-parameter(s) {unknown}; it accepts {sorted(accepted - {'num_tasks'})}"
        )
    return cls(num_tasks=num_tasks, **hparams)
