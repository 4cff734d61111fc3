"""Store the step time each ``mtobench table`` estimate uses (``configs/step_costs.yaml``).

A cheap measurement: EW steps of the table's model on random input at a reduced size (at most ``MAX_PIXELS``
pixels per image and ``MAX_BATCH`` images), scaled linearly in pixels and batch to the protocol's size. Convolutional
cost is close to linear in both; the number stays an estimate. ``mtobench table NAME --dry-run --time-steps N``
times real full-size steps instead.

Usage: ``python -m benchmark.perf.table_costs [NAME ...]`` (all tables by default).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import yaml

from benchmark.records import git_state
from benchmark.report.paper_tables import STEP_COSTS_FILE, estimate_step_seconds, load_protocol, load_registry
from benchmark.runner import create_datamodule

MAX_PIXELS = 96 * 128
MAX_BATCH = 4
MULTIPLE = 32


def reduced_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(C, H, W)`` shrunk by one factor to at most ``MAX_PIXELS`` pixels, sides kept multiples of 32 (pooling)."""
    c, h, w = shape
    if h * w <= MAX_PIXELS:
        return shape
    f = math.sqrt(MAX_PIXELS / (h * w))
    return c, max(MULTIPLE, round(h * f / MULTIPLE) * MULTIPLE), max(MULTIPLE, round(w * f / MULTIPLE) * MULTIPLE)


def measure(name: str, steps: int = 2) -> dict:
    entry = load_registry()[name]
    suite = load_protocol(entry)
    suite.train.accelerator = "cpu"
    tasks = create_datamodule(suite).tasks
    shape = reduced_shape(entry.input_shape)
    batch = min(suite.train.batch_size, MAX_BATCH)
    seconds, device = estimate_step_seconds(suite, tasks, shape, steps, batch_size=batch)
    scale = (suite.train.batch_size / batch) * (math.prod(entry.input_shape[1:]) / math.prod(shape[1:]))
    return {"step_s": round(seconds * scale, 4), "device": f"{device} ({torch.get_num_threads()} threads)",
            "how": f"{steps} EW steps at batch {batch} x {shape[1]}x{shape[2]} scaled x{scale:.1f} to batch "
                   f"{suite.train.batch_size} x {entry.input_shape[1]}x{entry.input_shape[2]}, commit "
                   f"{(git_state().get('git_commit') or '?')[:10]}, {time.strftime('%Y-%m-%d')}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*")
    names = parser.parse_args().names or list(load_registry())
    data = yaml.safe_load(STEP_COSTS_FILE.read_text(encoding="utf-8")) if STEP_COSTS_FILE.is_file() else None
    data = data or {}
    stored = data.setdefault("tables", {})
    for name in names:
        try:
            stored[name] = measure(name)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            print(f"{name}: not measured: {exc}")
            continue
        print(name, stored[name])
        header = "# Step times of `mtobench table NAME --dry-run` (python -m benchmark.perf.table_costs)\n"
        STEP_COSTS_FILE.write_text(header + yaml.safe_dump(data, sort_keys=True), encoding="utf-8")


if __name__ == "__main__":
    main()
