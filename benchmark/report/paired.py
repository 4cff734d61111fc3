"""The leaderboard's paired comparison (docs/protocols.md R.6): every method row's per-seed Δm minus that of EW on
the same seed (same initialisation and data order), and, for a row trained on a modified model (e.g. CSO on the
per-task-BN SegNet), minus that of its control, EW on that same model.

Pairs are formed on the seeds both rows have; seeds only one side has are named in the :class:`Pairing`, never
dropped silently. The arithmetic is :func:`benchmark.scoring.paired_difference`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmark.scoring import PairedStats, paired_difference

EW_METHOD = "ew"
REFERENCE = "reference"
"""``vs_ew`` of the plain EW row itself."""
IS_CONTROL = "is the control"
"""``vs_control`` of an EW row on a modified model: it is the control of the rows on that model."""
NO_CONTROL = "no control run"
"""``vs_control`` of a row on a modified model without an EW run on that model (a warning names it)."""


@dataclass(frozen=True)
class Pairing:
    """One row against a reference row: the paired statistics over the seeds both have (None if they share
    none), and the seeds each side has that the other lacks."""

    reference: str
    stats: PairedStats | None
    only_here: tuple[int, ...]
    only_reference: tuple[int, ...]

    @property
    def seeds(self) -> tuple[int, ...]:
        return () if self.stats is None else tuple(self.stats.differences)


def pair(here: Mapping[int, float], reference: Mapping[int, float], label: str) -> Pairing:
    """``here − reference`` per seed, on the seeds both have."""
    common = sorted(set(here) & set(reference))
    stats = paired_difference({s: here[s] for s in common}, {s: reference[s] for s in common}) if common else None
    return Pairing(label, stats, tuple(sorted(set(here) - set(reference))),
                   tuple(sorted(set(reference) - set(here))))


def model_of(record: Mapping[str, Any]) -> tuple[str, str]:
    """A run's model as ``(key, text)``: ``key`` compares name and resolved params; ``text`` names it with the
    run's overrides, e.g. ``segnet(task_bn=true)``. A record without a ``model`` entry counts as the suite's."""
    model = record.get("model") or {}
    key = json.dumps({"name": model.get("name"), "params": model.get("params") or {}}, sort_keys=True, default=str)
    overrides = model.get("overrides") or {}
    inner = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in sorted(overrides.items()))
    name = str(model.get("name") or "model")
    return key, f"{name}({inner})" if inner else name


def _control_entry(row: Any) -> str:
    """The suite entry that adds ``row``'s control, e.g. ``{name: ew, label: ew-taskbn, model: {task_bn: true}}``."""
    overrides = row.model_overrides
    suffix = "-".join(k.replace("_", "") + ("" if v is True else str(v)) for k, v in sorted(overrides.items()))
    values = ", ".join(f"{k}: {json.dumps(v, default=str)}" for k, v in sorted(overrides.items()))
    return f"{{name: ew, label: ew-{suffix}, model: {{{values}}}}}"


def _plain_ew(rows: Sequence[Any]) -> Any | None:
    """The EW row every row is paired with: method ``ew`` without model overrides, labelled ``ew`` if several."""
    plain = [r for r in rows if r.method == EW_METHOD and not r.model_overrides]
    return next((r for r in plain if r.label == EW_METHOD), plain[0] if plain else None)


def pair_rows(rows: Sequence[Any], higher_is_better: bool = False) -> tuple[list[Any], list[str]]:
    """``rows`` (``MethodRow``s with per-seed Δm) with ``vs_ew`` and ``vs_control`` filled, ordered by the paired
    Δm − EW (rows without one after, by their own Δm), and the warnings about missing references."""
    if not rows or all(not r.delta_m_seeds for r in rows):
        return list(rows), []
    warnings = []
    ew = _plain_ew(rows)
    if ew is None:
        warnings.append("No plain EW run (method `ew` on the suite's model): no row can be paired with EW; add "
                        "`{name: ew}` to the suite's methods.")
    out = []
    for row in rows:
        vs_ew: Pairing | str | None = None
        if ew is not None:
            vs_ew = REFERENCE if row is ew else pair(row.delta_m_seeds, ew.delta_m_seeds, ew.label)
        vs_control: Pairing | str | None = None
        if ew is not None and row.model_key != ew.model_key:
            controls = [r for r in rows if r.method == EW_METHOD and r.model_key == row.model_key]
            if row.method == EW_METHOD:
                vs_control = IS_CONTROL
            elif controls:
                vs_control = pair(row.delta_m_seeds, controls[0].delta_m_seeds, controls[0].label)
            else:
                vs_control = NO_CONTROL
                warnings.append(f"{row.label} trains on {row.model}, but no EW run on that model, so its gain over "
                                f"EW may come from the model: add `{_control_entry(row)}` to the suite's methods.")
        out.append(dataclasses.replace(row, vs_ew=vs_ew, vs_control=vs_control))
    return sorted(out, key=lambda row: _paired_order(row, -1.0 if higher_is_better else 1.0)), warnings


def _paired_order(row: Any, sign: float) -> tuple[bool, int, float, float, str]:
    """Full rows before rows with fewer seeds; then by the paired difference to EW, best first (``sign``: -1 when
    higher Δm is better), then by the row's own Δm."""
    def finite(value: float | None) -> float | None:
        return value if value is not None and not math.isnan(value) else None

    paired = 0.0 if row.vs_ew == REFERENCE else (
        finite(row.vs_ew.stats.mean) if isinstance(row.vs_ew, Pairing) and row.vs_ew.stats else None)
    own = finite(row.delta_m.mean) if row.delta_m is not None else None
    fewer = getattr(row, "fewer_seeds", False)
    if paired is not None:
        return fewer, 0, sign * paired, sign * own if own is not None else 0.0, row.label
    return (fewer, 1, sign * own, 0.0, row.label) if own is not None else (fewer, 2, 0.0, 0.0, row.label)
