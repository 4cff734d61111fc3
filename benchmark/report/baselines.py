"""Versioned single-task baselines: measured by a suite's own STL runs, or published in ``reference_tables.yaml``.

A suite's ``stl_baseline`` is ``measured`` or the id of a published baseline: a key of the YAML's ``baselines``
section (e.g. ``stl_nyuv2_segnet``) or a table id, whose ``baseline`` is then used (e.g. ``cso_t3_cityscapes``).
Published values are keyed by metric name (``miou``); a record's metrics are ``<task>/<metric>``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.scoring import default_reference_path, load_reference_tables

MEASURED = "measured"


@dataclass(frozen=True)
class PublishedBaseline:
    id: str
    values: dict[str, float]
    source: str
    path: str


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"reference tables not found at {path}")
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def published_ids(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Every id ``stl_baseline`` may name: the ``baselines`` keys and the ids of tables with baseline values."""
    resolved = Path(path) if path is not None else default_reference_path()
    tables = load_reference_tables(resolved)
    with_values = [t for t, table in tables.items() if ((table.get("baseline") or {}).get("values"))]
    return sorted({*(_load_yaml(resolved).get("baselines") or {}), *with_values})


def published_baseline(baseline_id: str, path: str | os.PathLike[str] | None = None) -> PublishedBaseline:
    """The published baseline ``baseline_id`` with its source: the ``source`` of the table that defines it, or of
    every table whose baseline has these values."""
    resolved = Path(path) if path is not None else default_reference_path()
    tables = load_reference_tables(resolved)
    named = _load_yaml(resolved).get("baselines") or {}
    if baseline_id in named:
        values = {k: float(v) for k, v in named[baseline_id].items()}
        sources = sorted({str((t.get("baseline") or {}).get("source")) for t in tables.values()
                          if (t.get("baseline") or {}).get("values") == named[baseline_id]
                          and (t.get("baseline") or {}).get("source")})
        source = "; ".join(sources) or "no table names a source"
    elif baseline_id in tables and (tables[baseline_id].get("baseline") or {}).get("values"):
        base = tables[baseline_id]["baseline"]
        values = {k: float(v) for k, v in base["values"].items()}
        source = str(base.get("source") or f"{tables[baseline_id].get('title', baseline_id)}, "
                     f"row {base.get('method', 'STL')!r}")
    else:
        raise KeyError(f"stl_baseline {baseline_id!r} is neither {MEASURED!r} nor a published baseline of "
                       f"{resolved}; known: {published_ids(resolved)}")
    return PublishedBaseline(baseline_id, values, source, str(resolved))


def metric_key_map(names: Sequence[str], record_keys: Sequence[str]) -> dict[str, str]:
    """Published metric name -> the record's ``<task>/<metric>`` key with that ``<metric>`` (which must be unique
    among the record keys); names without a match are left out."""
    by_metric: dict[str, list[str]] = {}
    for key in record_keys:
        by_metric.setdefault(key.rsplit("/", 1)[-1], []).append(key)
    out = {}
    for name in names:
        keys = by_metric.get(name, [])
        if len(keys) > 1:
            raise ValueError(f"published metric {name!r} matches several record metrics {keys}")
        if keys:
            out[name] = keys[0]
    return out


def match_metrics(published: Mapping[str, float], record_keys: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    """Published values keyed by the record's ``<task>/<metric>`` keys (see :func:`metric_key_map`), and the
    record keys without a published value."""
    matched = {key: published[name] for name, key in metric_key_map(list(published), record_keys).items()}
    return matched, [k for k in record_keys if k not in matched]
