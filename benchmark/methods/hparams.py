"""Hyper-parameter checks shared by every method, and ``hparams()`` read off the constructor signature.

Each check returns the value in its canonical type, or raises ``ValueError`` naming the method, the field and
the value (``"PCGrad: eps must be a finite number >= 0, got -1.0"``).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence


def _owner(method: object) -> str:
    return method if isinstance(method, str) else type(method).__name__


def number(method: object, field: str, value, *, low: float | None = None, high: float | None = None,
           open_low: bool = False, open_high: bool = False, none: bool = False) -> float | None:
    """``value`` as a finite float in ``[low, high]`` (``(low`` / ``high)`` when open); ``None`` if ``none``."""
    if value is None and none:
        return None
    bounds = " and ".join(b for b in (f"{'>' if open_low else '>='} {low}" if low is not None else "",
                                      f"{'<' if open_high else '<='} {high}" if high is not None else "") if b)
    or_none = " or None" if none else ""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        wanted = "a finite number" + (f" {bounds}" if bounds else "")
        raise ValueError(f"{_owner(method)}: {field} must be {wanted}{or_none}, got {value!r}")
    if (low is not None and (value <= low if open_low else value < low)) or (
            high is not None and (value >= high if open_high else value > high)):
        raise ValueError(f"{_owner(method)}: {field} must be {bounds}{or_none}, got {value!r}")
    return float(value)


def integer(method: object, field: str, value, low: int = 1) -> int:
    """``value`` as an int ``>= low`` (a bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{_owner(method)}: {field} must be an int >= {low}, got {value!r}")
    return value


def choice(method: object, field: str, value, allowed: Sequence):
    """``value`` if it is one of ``allowed`` (a bool never stands for 0 or 1)."""
    if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed) or value not in allowed:
        raise ValueError(f"{_owner(method)}: {field}={value!r} is not one of {tuple(allowed)}")
    return value


def flag(method: object, field: str, value) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{_owner(method)}: {field} must be a bool, got {value!r}")
    return value


def constructor_hparams(method: object) -> dict:
    """``{arg: method.<arg>}`` for every constructor argument but ``num_tasks``: what rebuilds the method."""
    params = inspect.signature(type(method).__init__).parameters
    return {name: copy.copy(getattr(method, name)) for name in params if name not in ("self", "num_tasks")}
