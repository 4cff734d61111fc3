"""Name look-up errors that suggest the nearest known names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_name(kind: str, name: str, known: Iterable[str], where: str = "") -> KeyError:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
    origin = f" ({where})" if where else ""
    return KeyError(f"unknown {kind} {name!r}{hint} Known {kind}s{origin}: {', '.join(known)}")
