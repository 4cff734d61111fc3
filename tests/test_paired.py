"""Paired-by-seed comparison: the arithmetic (against scipy's paired t-test) and the pairing itself (the same
seed gives every method the same initial weights and the same batches, through the runner's own training path)."""

import math

import numpy as np
import pytest
import torch
from rich.progress import Progress
from scipy import stats

from benchmark.config import load_suite
from benchmark.run_log import RunLog
from benchmark.runner import create_datamodule, plan_runs, train_one
from benchmark.scoring import paired_difference, seeds_to_separate

SUITE = """
name: pairing
dataset:
  name: synthetic_scenes
  params: {{height: 16, width: 16, n_train: 24, n_val: 8, n_test: 8, supersample: 1, generate_workers: 1,
            data_dir: {data}}}
model: {{name: segnet, params: {{width: 4, levels: 2}}}}
train: {{epochs: 2, batch_size: 8, jacobian_mode: loop}}
methods: [{{name: ew}}, {{name: pcgrad}}, {{name: ew, label: ew-taskbn, model: {{task_bn: true}}}},
          {{name: cso, model: {{task_bn: true}}}}]
seeds: [0, 1]
stl: false
logging: {{wandb: "off"}}
output_dir: {out}
"""


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_paired_difference_matches_scipy_ttest_rel(n):
    rng = np.random.default_rng(n)
    common = rng.normal(0, 10, n)
    a = {seed: float(v) for seed, v in zip(range(10, 10 + n), common + rng.normal(-1.5, 1.0, n))}
    b = {seed: float(v) for seed, v in zip(range(10, 10 + n), common + rng.normal(0, 1.0, n))}
    got = paired_difference(a, b)
    seeds = sorted(a)
    result = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    low, high = result.confidence_interval(0.95)
    assert got.n == n
    assert got.mean == pytest.approx((low + high) / 2, rel=1e-12)
    assert got.ci95_half_width == pytest.approx((high - low) / 2, rel=1e-12)
    assert got.separable == (result.pvalue < 0.05)
    assert got.differences == {s: a[s] - b[s] for s in seeds}


def test_paired_is_narrower_than_unpaired_when_the_seed_noise_is_common():
    a = {0: -0.7 - 8.3, 1: 12.8 - 7.1, 2: 5.0 - 7.9}
    b = {0: -0.7, 1: 12.8, 2: 5.0}
    got = paired_difference(a, b)
    t = stats.t.ppf(0.975, 2)
    diffs = np.array([-8.3, -7.1, -7.9])
    assert got.ci95_half_width == pytest.approx(t * diffs.std(ddof=1) / math.sqrt(3))
    assert got.separable and got.mean == pytest.approx(diffs.mean())
    unpaired = t * math.sqrt(np.var(list(a.values()), ddof=1) / 3 + np.var(list(b.values()), ddof=1) / 3)
    assert unpaired > 5 * got.ci95_half_width


def test_unmatched_seeds_are_refused_by_name():
    with pytest.raises(ValueError, match=r"only in a: \[2\], only in b: \[3\]"):
        paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 3: 3.0})
    with pytest.raises(ValueError, match="at least one matched seed"):
        paired_difference({}, {})


def test_one_seed_or_nan_is_never_separable():
    one = paired_difference({0: 5.0}, {0: 1.0})
    assert one.mean == 4.0 and math.isnan(one.ci95_half_width) and not one.separable
    nan = paired_difference({0: 5.0, 1: math.nan, 2: 4.0}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert math.isnan(nan.mean) and not nan.separable
    same = paired_difference({0: 3.0, 1: 4.0}, {0: 1.0, 1: 2.0})
    assert same.ci95_half_width == 0.0 and same.separable


def test_seeds_to_separate_is_the_first_n_whose_half_width_fits():
    n = seeds_to_separate(1.0, 2.0)
    width = [stats.t.ppf(0.975, k - 1) / math.sqrt(k) for k in (n - 1, n)]
    assert width[1] < 2.0 and (n == 2 or width[0] >= 2.0)
    assert seeds_to_separate(0.0, 0.1) == 2
    with pytest.raises(ValueError, match="difference > 0"):
        seeds_to_separate(1.0, 0.0)


class FirstSteps(RunLog):
    """The runner's logging callback, keeping the weights before the first step and every batch of epoch 0."""

    def __init__(self) -> None:
        super().__init__()
        self.initial: dict[str, torch.Tensor] = {}
        self.batches: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 0:
            self.batches.append({"image": batch["image"].clone(),
                                 **{t: v.clone() for t, v in batch["targets"].items()}})


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Each planned run of the suite (by label and seed) trained through ``train_one`` with a watching callback."""
    tmp = tmp_path_factory.mktemp("pairing")
    path = tmp / "suite.yaml"
    path.write_text(SUITE.format(data=tmp / "data", out=tmp / "runs"))
    suite = load_suite(path)
    dm = create_datamodule(suite)
    dm.setup("fit")
    out = {}
    with Progress(disable=True) as progress:
        for run in plan_runs(suite, [t.name for t in dm.tasks]):
            watch = FirstSteps()
            train_one(suite, run, dm, progress, watch)
            out[(run.run_id.split("/")[-2], run.seed)] = watch
    return out


def _same_batches(x: FirstSteps, y: FirstSteps) -> bool:
    return len(x.batches) == len(y.batches) and all(
        set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(x.batches, y.batches))


def _same_state(x: dict, y: dict) -> bool:
    return set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("pair", [("ew", "pcgrad"), ("ew-taskbn", "cso")])
def test_the_same_seed_gives_the_same_initial_weights_and_batches(started, pair):
    for seed in (0, 1):
        a, b = (started[(label, seed)] for label in pair)
        assert _same_state(a.initial, b.initial)
        assert len(a.batches) == 3 and _same_batches(a, b)
    assert not _same_state(started[(pair[0], 0)].initial, started[(pair[0], 1)].initial)
    assert not _same_batches(started[(pair[0], 0)], started[(pair[0], 1)])


def test_task_bn_model_starts_from_the_plain_models_weights(started):
    """Per-task BN adds parameters but draws no random numbers (BatchNorm starts at weight 1, bias 0), so the
    convolutions and heads of the task-BN SegNet start equal to the plain one's, and every per-task BN equals
    the plain model's BN at that position."""
    for seed in (0, 1):
        plain, task_bn = started[("ew", seed)].initial, started[("ew-taskbn", seed)].initial
        assert _same_batches(started[("ew", seed)], started[("ew-taskbn", seed)])
        mapped = {}
        for key, value in task_bn.items():
            parts = key.split(".")
            if "norms" in parts:
                i = parts.index("norms")
                key = ".".join(parts[:i] + parts[i + 2:])
            mapped.setdefault(key, []).append(value)
        assert set(mapped) == set(plain)
        assert any(len(v) == 3 for v in mapped.values())
        for key, values in mapped.items():
            assert all(torch.equal(v, plain[key]) for v in values), key
