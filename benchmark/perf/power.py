"""The statistical power of a suite's records: per method, the paired Δm difference to EW (and to its control, the
EW run on the same modified model), its 95% CI and the seeds a 2-point difference needs, plus convergence (the
last epoch's relative change of the validation loss) and the step time as a ratio to EW's (the records' median
step times; only meaningful when the runs shared one quiet machine).

Δm is taken per seed against the mean of the suite's single-task runs (any STL seeds; the baseline only scales a
paired difference; EW's mean stands in for a task with no STL run yet). Selection rule: the last epoch.

Usage: ``python -m benchmark.perf.power RECORDS_DIR [--target 2.0]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from pathlib import Path

from benchmark.records import read_record
from benchmark.scoring import delta_m, paired_difference, seed_mean, seed_std, seeds_to_separate, select

EW = "ew"


def load(records_dir: Path) -> list[dict]:
    paths = [p for p in sorted(Path(records_dir).rglob("seed*.json")) if "wandb" not in p.parts]
    if not paths:
        raise FileNotFoundError(f"no seed*.json run records under {records_dir}")
    return [read_record(p) for p in paths]


def change_per_epoch_last_interval(record: dict) -> float:
    """Relative change of the validation loss per epoch over the last evaluated interval (one epoch when every
    epoch is evaluated), in percent (positive: still falling)."""
    entries = record["epochs"]
    if len(entries) < 2:
        return math.nan
    before, last = entries[-2], entries[-1]
    change = (before["val_loss"] - last["val_loss"]) / before["val_loss"]
    return 100.0 * change / (last["epoch"] - before["epoch"])


def control_label(record: dict, by_label: dict[str, list[dict]]) -> str | None:
    """The EW label trained on the same model overrides as ``record`` (None for the plain model)."""
    overrides = record["model"]["overrides"]
    if not overrides:
        return None
    for label, runs in by_label.items():
        if runs[0]["method"] == EW and runs[0]["model"]["overrides"] == overrides and label != record["method_label"]:
            return label
    return None


def matched(reference: dict[int, float], runs: dict[int, float]) -> dict[int, float]:
    """The reference's scores on the seeds of ``runs`` (a run still training may have fewer seeds than EW)."""
    return {seed: reference[seed] for seed in runs if seed in reference}


def power_table(records: list[dict], target: float = 2.0) -> list[str]:
    stl = [r for r in records if r["kind"] == "stl"]
    mtl = [r for r in records if r["kind"] == "mtl"]
    metrics = {k: v["direction"] for k, v in mtl[0]["metrics"].items()}
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in mtl:
        by_label[r["method_label"]].append(r)
    baseline, stand_ins = {}, []
    for k in metrics:
        runs = [r for r in stl if k in r["metrics"]] or by_label[EW]
        stand_ins += [k] if runs is by_label[EW] else []
        baseline[k] = seed_mean([select(r, "last")[k] for r in runs])
    dm = {label: {r["seed"]: delta_m(select(r, "last"), baseline, metrics) for r in runs}
          for label, runs in by_label.items()}
    step = {label: {r["seed"]: r["timing"]["step_time_median_s"] for r in runs} for label, runs in by_label.items()}
    note = f" (no STL run yet for {', '.join(stand_ins)}: EW's mean stands in)" if stand_ins else ""
    lines = [f"STL baseline: {len(stl)} runs{note}. Target: separate a {target:g}-point Δm difference.", "",
             "| method | seeds | Δm mean ± std | paired − EW (95% CI) | sep. | std of paired | seeds for ±target "
             "| paired − control | val-loss change % per epoch, last interval (max) | step ×EW |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, runs in sorted(by_label.items(), key=lambda kv: seed_mean(list(dm[kv[0]].values()))):
        values = list(dm[label].values())
        row = [label, str(len(values)), f"{seed_mean(values):.2f} ± {seed_std(values):.2f}"]
        if label != EW and EW in dm:
            p = paired_difference(dm[label], matched(dm[EW], dm[label]))
            sd = seed_std(list(p.differences.values())) if p.n > 1 else math.nan
            row += [f"{p.mean:+.2f} ± {p.ci95_half_width:.2f}", "yes" if p.separable else "no", f"{sd:.2f}",
                    str(seeds_to_separate(sd, target)) if p.n > 1 else "n/a"]
        else:
            row += ["", "", "", ""]
        control = control_label(runs[0], by_label)
        if control is not None:
            c = paired_difference(dm[label], matched(dm[control], dm[label]))
            row.append(f"{c.mean:+.2f} ± {c.ci95_half_width:.2f} vs {control}" + (" (sep.)" if c.separable else ""))
        else:
            row.append("")
        row.append(f"{max(change_per_epoch_last_interval(r) for r in runs):.2f}")
        ratio = [step[label][s] / step[EW][s] for s in step[label] if EW in step and s in step[EW]]
        row.append(f"{statistics.median(ratio):.2f}" if ratio else "")
        lines.append("| " + " | ".join(row) + " |")
    stl_change = [change_per_epoch_last_interval(r) for r in stl]
    if stl_change:
        lines += ["", f"STL val-loss change % per epoch over the last evaluated interval: max {max(stl_change):.2f}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records_dir", type=Path)
    parser.add_argument("--target", type=float, default=2.0)
    args = parser.parse_args(argv)
    print("\n".join(power_table(load(args.records_dir), args.target)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
