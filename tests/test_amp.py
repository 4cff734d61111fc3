"""Mixed precision: methods see unscaled float32 gradients; steps the GradScaler skips are skipped and counted."""

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from benchmark.engine import jacobian_loop
from benchmark.methods import create
from benchmark.methods.base import Method, Needs
from benchmark.module import ModuleConfig, MTOModule
from benchmark.optim import OptimConfig
from models.segnet import SegNetMTL
from tests import ddp_harness as H

HEADS = {"semseg": 3, "depth": 1, "normal": 3}


class RecordingSum(Method):
    """A Jacobian method that records what it was given and returns the plain sum."""

    needs = Needs.JACOBIAN

    def __init__(self, num_tasks, grad_source="params"):
        super().__init__(num_tasks, grad_source=grad_source)
        self.seen: list[torch.Tensor] = []
        self.autocast: list[bool] = []

    def aggregate(self, jacobian, losses=None):
        self.seen.append(jacobian.detach().clone())
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return jacobian.sum(0)


def fit(method: Method, steps: int, task_bn: bool = False, **trainer_kwargs):
    """Train ``steps`` SGD steps on one batch of a tiny SegNet; return the module, its initial state and the
    dtypes the trunk's first conv produced."""
    torch.manual_seed(0)
    model = SegNetMTL(HEADS, width=2, levels=1, task_bn=task_bn)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    dtypes = []
    model.stem[0].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    config = ModuleConfig(OptimConfig(lr=0.1, optimizer="sgd", momentum=0.0), jacobian_mode="loop")
    module = MTOModule(model, H.TASKS, method, config)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        **trainer_kwargs)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(H._One(H.global_batch()), batch_size=None))
    return module, init, dtypes


def changed(module: MTOModule, init: dict) -> bool:
    return any(not torch.equal(v, init[k]) for k, v in module.model.state_dict().items() if v.is_floating_point())


@pytest.mark.parametrize("grad_source", ["params", "rep_full"])
def test_bf16_autocast_gives_methods_float32_jacobians_outside_autocast(grad_source):
    method = RecordingSum(3, grad_source)
    module, init, dtypes = fit(method, steps=2, precision="bf16-mixed")
    assert torch.bfloat16 in dtypes
    assert len(method.seen) == 2 and all(j.dtype == torch.float32 for j in method.seen)
    assert method.autocast == [False, False]
    assert changed(module, init) and all(torch.isfinite(p).all() for p in module.model.parameters())


@pytest.mark.parametrize("name, task_bn", [("mgda_ub", False), ("pcgrad", False), ("cso", True)])
def test_bf16_training_runs(name, task_bn):
    module, init, dtypes = fit(create(name, 3), steps=2, task_bn=task_bn, precision="bf16-mixed")
    assert torch.bfloat16 in dtypes and changed(module, init)
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    assert module.stats.amp_skipped_steps == 0


def forced_overflow() -> MixedPrecision:
    """fp16 autocast with a scale of 2^127, which overflows the scaled losses; the first backoff goes to 2^10."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, backoff_factor=2.0**-117)
    return MixedPrecision("16-mixed", "cpu", scaler=scaler)


def test_fp16_overflow_is_skipped_counted_and_the_next_step_sees_unscaled_gradients():
    method = RecordingSum(3)
    module, init, dtypes = fit(method, steps=2, plugins=[forced_overflow()])
    assert torch.float16 in dtypes
    assert module.stats.amp_skipped_steps == 1
    assert len(method.seen) == 1 and method.seen[0].dtype == torch.float32
    assert changed(module, init)
    assert len(module.stats.step_times) == 1 and "update_norm" in module.stats.stat_counts
    assert module.stats.stat_counts["update_norm"] == 1
    # the step that ran started from the initial parameters (the first was skipped): its Jacobian, unscaled
    # from the 2^10 scale, matches the float32 one up to fp16 rounding
    torch.manual_seed(0)
    ref_model = SegNetMTL(HEADS, width=2, levels=1)
    ref = MTOModule(ref_model, H.TASKS, create("ew", 3))
    ref_jac = jacobian_loop(ref.task_losses(H.global_batch()), ref_model.shared_parameters())
    assert float((method.seen[0] - ref_jac).norm() / ref_jac.norm()) < 0.05


@pytest.mark.parametrize("name, task_bn", [("ew", False), ("mgda_ub", False), ("cso", True)])
def test_fp16_overflow_skips_loss_representation_and_own_step_methods_too(name, task_bn):
    module, init, _ = fit(create(name, 3), steps=2, task_bn=task_bn, plugins=[forced_overflow()])
    assert module.stats.amp_skipped_steps == 1 and changed(module, init)
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
