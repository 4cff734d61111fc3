"""What a run counts while it trains (``RunStats``): the epoch history, step times, skipped steps, the method's
step statistics and the logging probes. It round-trips through the checkpoint with ``state_dict``."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class RunStats:
    """The bookkeeping of one run.

    ``history``: one entry per validation pass (both splits' metrics, the validation loss, the epoch's LR and
    step-statistic means). ``step_times``: seconds of every step taken (skipped steps excluded). ``batches``:
    training batches seen. ``logged_step``: the statistics of the current batch if it is a logging step (not
    saved). ``resumes``: epoch and global step of every resume.
    """

    history: list[dict] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    nan_skips: int = 0
    amp_skipped_steps: int = 0
    stat_sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    stat_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stat_last: dict[str, float] = field(default_factory=dict)
    epoch_stats: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    epoch_lr: float | None = None
    batches: int = 0
    probe_seconds: float = 0.0
    probe_steps: int = 0
    probe_sources: set[str] = field(default_factory=set)
    resumes: list[dict] = field(default_factory=list)
    logged_step: dict[str, float] | None = None
    wall_before_s: float = 0.0
    """Training seconds of the earlier attempts of a resumed run (saved in each checkpoint with the current one)."""
    fit_started: float | None = None

    def add_step(self, stats: dict[str, float]) -> None:
        """Count one step's statistics (for the run's means and lasts and the epoch's means)."""
        for key, value in stats.items():
            self.stat_sums[key] += value
            self.stat_counts[key] += 1
            self.stat_last[key] = value
            self.epoch_stats[key].append(value)

    def add_probe(self, seconds: float, source: str) -> None:
        self.probe_seconds += seconds
        self.probe_steps += 1
        self.probe_sources.add(source)

    def end_epoch_stats(self) -> dict[str, float]:
        """The means of the step statistics since the last call, which starts a new epoch."""
        means = {k: sum(v) / len(v) for k, v in self.epoch_stats.items() if v}
        self.epoch_stats.clear()
        return means

    def method_summary(self) -> dict[str, dict[str, float]]:
        """Per statistic: its mean over the steps that reported it, and its last value."""
        return {k: {"mean": s / self.stat_counts[k], "last": self.stat_last[k]} for k, s in self.stat_sums.items()}

    def state_dict(self) -> dict:
        """Plain data (lists, dicts, numbers) for the checkpoint."""
        return {
            "history": self.history, "step_times": self.step_times, "nan_skips": self.nan_skips,
            "amp_skipped_steps": self.amp_skipped_steps,
            "stat_sums": dict(self.stat_sums), "stat_counts": dict(self.stat_counts), "stat_last": self.stat_last,
            "epoch_stats": dict(self.epoch_stats), "epoch_lr": self.epoch_lr, "resumes": self.resumes,
            "batches": self.batches, "probe": [self.probe_seconds, self.probe_steps, sorted(self.probe_sources)],
            "wall_s": self.wall_before_s + (time.perf_counter() - self.fit_started if self.fit_started else 0.0),
        }

    def load_state_dict(self, state: dict) -> None:
        self.history, self.step_times, self.nan_skips = state["history"], state["step_times"], state["nan_skips"]
        self.amp_skipped_steps = state["amp_skipped_steps"]
        self.stat_sums = defaultdict(float, state["stat_sums"])
        self.stat_counts = defaultdict(int, state["stat_counts"])
        self.stat_last = state["stat_last"]
        self.epoch_stats = defaultdict(list, state["epoch_stats"])
        if state["epoch_lr"] is not None:
            self.epoch_lr = state["epoch_lr"]
        self.resumes = state["resumes"]
        self.batches = state["batches"]
        self.probe_seconds, self.probe_steps, sources = state["probe"]
        self.probe_sources = set(sources)
        self.wall_before_s = state.get("wall_s", 0.0)
