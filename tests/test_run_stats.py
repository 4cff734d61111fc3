"""RunStats: the step statistics' means and lasts, epoch means, and a round trip through a weights-only checkpoint."""

import io

import pytest
import torch

from benchmark.module import ModuleConfig
from benchmark.optim import OptimConfig
from benchmark.run_stats import RunStats


def filled() -> RunStats:
    stats = RunStats()
    stats.add_step({"update_norm": 1.0, "weight_a": 0.5})
    stats.add_step({"update_norm": 3.0})
    stats.add_probe(0.25, "engine")
    stats.add_probe(0.5, "extra")
    stats.step_times += [0.1, 0.2]
    stats.nan_skips, stats.batches, stats.epoch_lr = 1, 3, 0.01
    stats.history.append({"epoch": 0, "val": {"a/x": 1.0}})
    return stats


def test_step_statistics_summarise_to_means_and_lasts_and_epoch_means_restart():
    stats = filled()
    assert stats.method_summary() == {"update_norm": {"mean": 2.0, "last": 3.0}, "weight_a": {"mean": 0.5, "last": 0.5}}
    assert stats.end_epoch_stats() == {"update_norm": 2.0, "weight_a": 0.5}
    assert stats.end_epoch_stats() == {}
    assert (stats.probe_seconds, stats.probe_steps, stats.probe_sources) == (0.75, 2, {"engine", "extra"})


def test_state_dict_round_trips_through_a_weights_only_checkpoint():
    stats = filled()
    buffer = io.BytesIO()
    torch.save(stats.state_dict(), buffer)
    buffer.seek(0)
    restored = RunStats()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored == stats
    restored.add_step({"new_stat": 2.0})
    assert restored.method_summary()["new_stat"] == {"mean": 2.0, "last": 2.0}


def test_module_config_takes_a_suites_train_settings_and_checks_them():
    from benchmark.config import TrainConfig

    train = TrainConfig(lr=0.05, optimizer="sgd", lr_schedule="step", nan_policy="skip", max_nan_skips=3)
    config = ModuleConfig.from_train(train, update_every=2, log_every_n_steps=5)
    assert config.optim == OptimConfig(lr=0.05, optimizer="sgd", lr_schedule="step")
    assert (config.nan_policy, config.max_nan_skips, config.update_every, config.log_every_n_steps) == ("skip", 3, 2, 5)
    with pytest.raises(ValueError, match="nan_policy='ignore'"):
        ModuleConfig(nan_policy="ignore")
    with pytest.raises(ValueError, match="lr_schedule='linear'"):
        OptimConfig(lr_schedule="linear")
