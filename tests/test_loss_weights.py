"""Fixed loss weights (``train.loss_weights``): every method optimises w_t L_t, the logs keep the raw losses, and a
suite without them fingerprints as before they existed."""

import copy

import lightning as L
import pytest
import torch

from benchmark import tasks as T
from benchmark.config import fingerprinted, load_suite
from benchmark.methods import create
from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import _BUILTINS, register
from benchmark.module import ModuleConfig, MTOModule
from benchmark.report.markdown import config_fingerprint
from benchmark.runner import check_methods
from benchmark.runner.plan import PlannedRun, fingerprint_fields
from models import MODELS
from tests.test_faults import TASKS, small_dm, suite_file

WEIGHTS = {"semseg": 2.0, "depth": 0.5}
W = torch.tensor([2.0, 0.5, 1.0])


class SeesLosses(Method):
    """Equal weights, keeping the losses the engine gave it."""

    needs = Needs.LOSSES

    def loss_weights(self, losses):
        self.seen = losses.detach().clone()
        return torch.ones_like(losses)


class OwnStep(Method):
    """Steps on the summed ``ctx.losses()`` itself; logs its first task's loss as a method statistic."""

    needs = Needs.LOSSES

    def loss_weights(self, losses):
        return torch.ones_like(losses)

    def own_step(self, ctx):
        losses = ctx.losses()
        self.seen = losses.detach().clone()
        self.seen_one = float(ctx.task_loss(ctx.task_names[1]))
        ctx.backward(losses.sum())
        ctx.optimizer.step()
        self.step_stats = {f"loss_{ctx.task_names[0]}": float(losses[0])}
        return True


@pytest.fixture
def recording_methods():
    register("test_sees_losses")(SeesLosses)
    register("test_own_step")(OwnStep)
    yield
    for name in ("test_sees_losses", "test_own_step"):
        _BUILTINS.pop(name)


def one_step(tmp_path, method: str, weights: dict | None, fixed: list | None = None):
    """One training step on a small synthetic batch from seed-0 weights; the module and its first batch."""
    dm = small_dm(tmp_path)
    dm.setup("fit")
    torch.manual_seed(0)
    model = MODELS["segnet"]({t.name: T.head_channels(t) for t in TASKS}, width=4, levels=2)
    m = create(method, 3, **({"weights": fixed} if fixed else {}))
    module = MTOModule(model, TASKS, m, ModuleConfig(loss_weights=weights, log_every_n_steps=1))
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return module, next(iter(dm.train_dataloader()))


def raw_losses(module: MTOModule, batch: dict, init: dict) -> torch.Tensor:
    """The task losses of ``batch`` at the initial weights ``init``, computed apart from the training step."""
    model = copy.deepcopy(module.model)
    model.load_state_dict(init)
    model.train()
    with torch.no_grad():
        z = model.encode(batch["image"])
        return torch.stack([T.task_loss(t, model.head(t.name, z), batch["targets"][t.name]).float() for t in TASKS])


def test_ew_on_weighted_losses_is_the_fixed_weighted_sum(tmp_path):
    """EW with loss weights w steps exactly as linear scalarisation with weights w (``fixed``) without them."""
    weighted, _ = one_step(tmp_path, "ew", WEIGHTS)
    fixed, _ = one_step(tmp_path, "fixed", None, fixed=W.tolist())
    plain, _ = one_step(tmp_path, "ew", None)
    a, b, c = (dict(m.model.named_parameters()) for m in (weighted, fixed, plain))
    assert all(torch.allclose(a[n], b[n], rtol=0, atol=1e-7) for n in a)
    assert any(not torch.allclose(a[n], c[n], atol=1e-6) for n in a)


def test_methods_see_the_weighted_losses_and_the_logs_the_raw_ones(tmp_path, recording_methods):
    torch.manual_seed(0)
    init = MODELS["segnet"]({t.name: T.head_channels(t) for t in TASKS}, width=4, levels=2).state_dict()
    for name in ("test_sees_losses", "test_own_step"):
        module, batch = one_step(tmp_path, name, WEIGHTS)
        raw = raw_losses(module, batch, init)
        torch.testing.assert_close(module.method.seen, raw * W, rtol=1e-5, atol=0)
        logged = module.stats.logged_step
        assert logged[f"loss_{TASKS[0].name}"] == pytest.approx(float(raw[0]), rel=1e-5), name
        if name == "test_own_step":
            assert module.method.seen_one == pytest.approx(float(raw[1] * W[1]), rel=1e-5)


def test_bad_loss_weights_are_named(tmp_path):
    path = suite_file(tmp_path)
    with pytest.raises(ValueError, match=r"train.loss_weights.depth=-1.0 must be finite and > 0"):
        load_suite(path, ["--suite.train.loss_weights", "{semseg: 1, depth: -1}"])
    suite = load_suite(path, ["--suite.train.loss_weights", "{semseg: 1, normals: 10}"])
    with pytest.raises(ValueError, match=r"train.loss_weights names \['normals'\], not tasks of dataset "
                                         r"'synthetic_scenes' \(its tasks: \['semseg', 'depth', 'normal'\]\)"):
        check_methods(suite, TASKS)


def test_unset_loss_weights_leave_the_fingerprints_as_before_they_existed(tmp_path):
    """Records made before ``train.loss_weights`` existed still match a suite that does not set it."""
    suite = load_suite(suite_file(tmp_path))
    run = PlannedRun(method="ew", hparams={}, seed=0, run_id="ew")
    fields = fingerprint_fields(suite, run)
    assert not any(k.startswith("train.loss_weights") for k in fields) and "train.lr" in fields
    config = suite.to_dict()
    older = copy.deepcopy(config)
    del older["train"]["loss_weights"]
    assert config_fingerprint(config) == config_fingerprint(older) == config_fingerprint(fingerprinted(config))
    weighted = load_suite(suite_file(tmp_path), ["--suite.train.loss_weights", "{depth: 2}"])
    assert fingerprint_fields(weighted, run)["train.loss_weights.depth"] == 2.0
    assert config_fingerprint(weighted.to_dict()) != config_fingerprint(config)
