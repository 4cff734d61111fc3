"""Differential test of protocol P1 (``configs/protocols/nashmtl_nyuv2.yaml``) against nash-mtl's own NYUv2 trainer.

``tests/reference/nashmtl_nyuv2/`` holds what AvivNavon/nash-mtl's ``experiments/nyuv2/trainer.py`` produced on
the MTAN-format fixture ``tests.fixtures_mtan.write_nyuv2(n_train=5, n_val=3, 32 x 32, seed 0)`` (provenance in
its ``header.json``), and what its ``methods/weight_methods.py`` produced on a small problem (``methods.json``).
Our side takes the protocol config, our datamodule (its loading, crop, flip and depth
scaling, fed the reference's batch order and augmentation draws), our SegNet-MTAN (the same initial weights
through :func:`tests.reference_replay.mtan_name`), our losses, metrics, optimizer, LR schedule and method, and
must reproduce the reference per step. Where the conventions differ on purpose the difference is stated here
and in the protocol file. The fast tests check the data, the parameter map, the step-1 losses, the loss
and metric functions and the protocol's metric aggregation, the BN settings, the LR schedule, the MGDA /
IMTL-G / Nash-MTL weight rules over 25 steps of a small problem, and our Nash-MTL / MGDA / CAGrad weights on the
Gramians the reference solved on along its recorded SegNet-MTAN runs; the model replays (21 recorded steps,
7 epochs of 3, of LS, MGDA, PCGrad, CAGrad, IMTL-G and Nash-MTL) are ``slow``, bounded by the reference's own
noise: the same run with 2 threads, or on another CPU (:data:`NOISE_RUNS`).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from benchmark import tasks as T
from benchmark.config import load_suite
from benchmark.methods import create
from benchmark.module import MTOModule
from benchmark.runner import create_datamodule, create_model, module_config, resolved_hparams
from tests.fixtures_mtan import write_nyuv2
from tests.reference_replay import (
    StepRecorder,
    check_fixture,
    load_reference,
    mtan_name,
    mtan_replay_loader,
    recipe_,
    rel_diff,
)

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "configs" / "protocols" / "nashmtl_nyuv2.yaml"
LINEAGE = "nashmtl_nyuv2"
TASKS = ["semseg", "depth", "normal"]
LABELS = {"ls": "LS", "mgda": "MGDA", "pcgrad": "PCGrad", "cagrad": "CAGrad", "imtl": "IMTL-G", "nashmtl": "Nash-MTL"}
RECORDED = [m for m in LABELS if (ROOT / "tests" / "reference" / LINEAGE / f"{m}.json").exists()]
"""The methods with a recorded SegNet-MTAN run (the slow replays)."""
BASE = "ls"
"""The recorded run whose data (7 epochs of crops and flips), parameter shapes and first step the fast tests use."""
WEIGHT_SCALE: dict[str, float] = {}
"""Our weights and gradients = the reference's x this, per method (none now: the protocol's MGDA sums to T as
nash-mtl's ``sol * T`` does, ``weight_sum: tasks``; with our default sum of 1, Adam's eps moved step 1's update
norm by 2.9e-3 on this fixture)."""
WEIGHT_RTOL = {"nashmtl": 2e-3}
"""Nash-MTL: the reference stops its CCCP/ECOS iterations at |G alpha - 1/alpha| < 1e-3; ours solves to 1e-10."""
STEP1_RTOL = 1e-5
STEP1_GRAD_RTOL = 1e-4
"""Gradient and update norms on step 1: float32 sums over 44M parameters in different orders."""
NOISE_RUNS = {"ls": ["ls_threads2", "ls_machine2"], "nashmtl": ["nashmtl_threads2", "nashmtl_machine2"],
              "mgda": ["mgda_threads2", "mgda_machine2"], "cagrad": ["cagrad_machine2"],
              "pcgrad": ["pcgrad_threads2", "pcgrad_machine3"], "imtl": ["imtl_threads2", "imtl_machine3"]}
"""The reference against itself (header ``noise_runs``): ``<m>_threads2`` is ``<m>.json`` recorded again with 2
torch threads instead of 1, ``<m>_machine2`` / ``_machine3`` on another CPU (header ``machines``: the records come
from machine 1 (LS, MGDA, CAGrad, Nash-MTL) or machine 2 (PCGrad, IMTL-G)); nothing else changed. A method
without a machine run also takes LS's; a method without any noise run takes LS's alone. Measured: IMTL-G's replay
on an AVX512 CPU against its AVX2 record left the thread-noise bound at step 9 (shared gradient norm 22.7 vs 9.7,
bound 1.13x) before ``imtl_machine3`` was recorded there."""
STEP1_OVERRIDES = {"nashmtl": {"weight": 5e-3, "grad_norm_heads": 5e-3}, "cagrad": {"grad_norm_shared": 1e-2},
                   "imtl": {"weight": 1e-2, "grad_norm_heads": 1e-2}}
"""Step-1 tolerances where the reference's solver input is not float32-accurate: nash-mtl builds the Gramian
with ``torch.mm`` of float32 gradients over 44M parameters, 7 % low on the diagonal on step 1 (ours: float64);
given the same Gramian the weights agree (``test_method_weights_on_recorded_segnet_gramians``). Measured on
step 1: Nash-MTL weights 3.4e-3 (its head gradients carry them), CAGrad's shared gradient norm 4.6e-3. IMTL-G:
nash-mtl's closed form in float32 on the 44M-element gradients moves the weights by up to 5.8e-3 from the float64
solution and the head gradient norm by 2.2e-3 (``test_imtl_step1_weights_are_the_float32_closed_form``)."""
MODEL_XFAIL: dict[str, str] = {}
"""Recorded methods whose model replay is a known mismatch (strict xfail), with the reason."""


def replayed_methods() -> list:
    return [pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=MODEL_XFAIL[m])) if m in MODEL_XFAIL else m
            for m in RECORDED]
REFERENCE_THREADS = 1
"""The torch thread count of the records (header ``environment.threads``); the replay runs with it too."""
NOISE_FACTOR = 3.0
MIN_DRIFT = 1e-3
"""The documented bound after step 1, per quantity: NOISE_FACTOR x the largest deviation of the reference from
itself over its noise runs (:data:`NOISE_RUNS`, all steps after the first), at least MIN_DRIFT.
Float32 reduction-order noise is amplified by Adam's first steps (|update| ~ lr per element whatever the
gradient), so no implementation can be held tighter than the reference holds itself."""


@pytest.fixture(scope="module")
def header() -> dict:
    return load_reference(LINEAGE, "header")


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory, header) -> Path:
    return check_fixture(write_nyuv2(tmp_path_factory.mktemp("nyuv2"), **header["fixture"]["kwargs"]),
                         header["fixture"], "*.npy")


def protocol_suite(root: Path, epochs: int | None = None):
    """The protocol file as shipped, pointed at the fixture (its size, no worker processes, CPU)."""
    suite = load_suite(PROTOCOL)
    suite.dataset.params.update(root=str(root), height=32, width=32, check_sizes=False, num_workers=0)
    if epochs is not None:
        suite.train.epochs = epochs
    suite.train.accelerator = "cpu"
    return suite


def method_config(suite, ref_method: str):
    return next(m for m in suite.methods if m.key == LABELS[ref_method])


def protocol_module(suite, ref_method: str, model) -> MTOModule:
    """Our method and module as ``benchmark.runner.train_one`` builds them from the suite."""
    m = method_config(suite, ref_method)
    method = create(m.name, len(TASKS), **resolved_hparams(suite, m))
    config = module_config(suite, log_every_n_steps=0)
    return MTOModule(model, create_datamodule(suite).tasks, method, config)


def reference_model(suite, dm):
    """Our model with the reference's initial weights (recipe keyed by reference names, mapped to ours)."""
    model = create_model(suite, dm.tasks)
    ours = dict(model.named_parameters())
    recipe_({ref: ours[mtan_name(ref, TASKS)] for ref in load_reference(LINEAGE, BASE)["param_shapes"]})
    return model


def sample_sums(image: torch.Tensor, targets: dict) -> list[float]:
    return [float(x.double().sum()) for x in (image, targets["semseg"], targets["depth"], targets["normal"])]


def test_batches_match_reference_crop_flip_and_order(fixture_root, monkeypatch):
    """Every training sample the reference fetched (crop, resize, depth / scale, flip, normal x negation,
    float32), summed per map, equals ours for the same draw."""
    ref = load_reference(LINEAGE, BASE)
    dm = create_datamodule(protocol_suite(fixture_root))
    loader = mtan_replay_loader(dm, ref, monkeypatch)
    train = [s for s in ref["samples"] if s["split"] == "train"]
    ours = []
    for epoch in range(len(loader.sampler.keys)):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            for b in range(batch["image"].shape[0]):
                ours.append(sample_sums(batch["image"][b], {k: v[b] for k, v in batch["targets"].items()}))
    assert len(ours) == len(train) >= 5
    for i, (mine, theirs) in enumerate(zip(ours, train)):
        np.testing.assert_allclose(mine, theirs["sums"], rtol=1e-6, atol=1e-3, err_msg=f"sample {i}: {theirs}")


def test_parameter_map_and_counts_are_exact(fixture_root):
    ref = load_reference(LINEAGE, BASE)
    suite = protocol_suite(fixture_root)
    model = create_model(suite, create_datamodule(suite).tasks)
    ours = {n: list(p.shape) for n, p in model.named_parameters()}
    mapped = {mtan_name(n, TASKS): shape for n, shape in ref["param_shapes"].items()}
    assert mapped == ours
    assert sum(p.numel() for p in model.parameters()) == ref["param_count"] == 44_229_073
    assert sorted(mtan_name(n, TASKS) for n in ref["buffer_names"]) == sorted(n for n, _ in model.named_buffers())


def test_step1_losses_match(fixture_root, monkeypatch):
    """One train-mode forward on the reference's first batch: the three masked losses to float32 precision."""
    ref = load_reference(LINEAGE, BASE)
    suite = protocol_suite(fixture_root)
    dm = create_datamodule(suite)
    model = reference_model(suite, dm).train()
    batch = next(iter(mtan_replay_loader(dm, ref, monkeypatch)))
    with torch.no_grad():
        losses = protocol_module(suite, "ls", model).task_losses(batch)
    np.testing.assert_allclose(losses.tolist(), ref["steps"][0]["losses"], rtol=STEP1_RTOL)


def test_lr_schedule_matches_reference_steplr(fixture_root):
    """Our per-batch LambdaLR over the protocol's 200 epochs of ceil(795 / 2) batches gives, at every epoch,
    the reference's StepLR (its recorded arguments, stepped once per epoch as its trainer does)."""
    ref = load_reference(LINEAGE, BASE)
    suite = protocol_suite(fixture_root)
    suite.train.epochs = 200
    module = protocol_module(suite, "ls", create_model(suite, create_datamodule(suite).tasks))
    per_epoch = math.ceil(795 / suite.train.batch_size)
    module._trainer = SimpleNamespace(estimated_stepping_batches=per_epoch * 200, max_epochs=200)
    ours = module.configure_optimizers()
    theirs_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=ref["steps"][0]["lr"])
    theirs = torch.optim.lr_scheduler.StepLR(theirs_opt, ref["scheduler"]["step_size"], ref["scheduler"]["gamma"])
    factor = ours["lr_scheduler"].lr_lambdas[0]
    for epoch in range(200):
        for batch in (0, per_epoch - 1):
            assert suite.train.lr * factor(epoch * per_epoch + batch) == pytest.approx(theirs.get_last_lr()[0])
        theirs.step()
    assert ref["lr_per_scheduler_step"][0] == suite.train.lr


def recipe_predictions(b: int, shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The predictions ``metrics.json`` was recorded with (header ``metrics_json``)."""
    g = torch.Generator().manual_seed(1000 + b)
    n, _, h, w = shape
    seg = torch.log_softmax(torch.randn(n, 13, h, w, generator=g), dim=1)
    depth = 0.5 + 7.5 * torch.rand(n, 1, h, w, generator=g)
    normal = torch.randn(n, 3, h, w, generator=g)
    return seg, depth, normal / torch.norm(normal, p=2, dim=1, keepdim=True)


def test_losses_and_metrics_match_reference_functions(fixture_root):
    """nash-mtl's calc_loss, ConfMatrix, depth_error and normal_error on fixed predictions over our test loader:
    our masked losses per batch; mIoU / pixel accuracy from one confusion matrix over the split; depth and normal
    errors per batch, averaged over batches (the reference's rule; our records pool all pixels instead, see
    the protocol file); the normal median within our histogram's bin width (0.005 degrees)."""
    ref = load_reference(LINEAGE, "metrics")
    dm = create_datamodule(protocol_suite(fixture_root))
    specs = {t.name: t for t in dm.tasks}
    seg_metric = T.make_metric(specs["semseg"])
    rows = []
    for b, (batch, theirs) in enumerate(zip(dm.test_dataloader(), ref["batches"], strict=True)):
        preds = dict(zip(TASKS, recipe_predictions(b, batch["image"].shape)))
        losses = [float(T.task_loss(specs[t], preds[t], batch["targets"][t])) for t in TASKS]
        np.testing.assert_allclose(losses, theirs["losses"], rtol=STEP1_RTOL, err_msg=f"batch {b} losses")
        seg_metric.update(preds["semseg"], batch["targets"]["semseg"])
        row = []
        for task in ("depth", "normal"):
            metric = T.make_metric(specs[task])
            metric.update(preds[task], batch["targets"][task])
            values = [float(v) for v in metric.compute().values()]
            row += values[:2] if task == "depth" else values[:2] + [v / 100 for v in values[2:5]]
        np.testing.assert_allclose(row, theirs["metrics"], rtol=1e-5, atol=1e-2, err_msg=f"batch {b} metrics")
        rows.append(row)
    ours = seg_metric.compute()
    np.testing.assert_allclose([float(ours["miou"]) / 100, float(ours["pix_acc"]) / 100],
                               [ref["miou"], ref["pix_acc"]], rtol=1e-6)
    np.testing.assert_allclose(np.mean(rows, axis=0), ref["mean_of_batch_means"], rtol=1e-5, atol=1e-2)


def test_protocol_metrics_aggregate_as_reference(fixture_root):
    """The protocol module's own test metrics (its ``metric_aggregation`` and ``depth_clamp``), updated batch by
    batch with the ``metrics.json`` predictions, give nash-mtl's split values: mIoU / pixel accuracy from one
    confusion matrix, depth and normal errors as the mean of per-batch values."""
    ref = load_reference(LINEAGE, "metrics")
    suite = protocol_suite(fixture_root)
    dm = create_datamodule(suite)
    metrics = protocol_module(suite, "ls", create_model(suite, dm.tasks)).metrics["test"]
    for b, batch in enumerate(dm.test_dataloader()):
        for task, pred in zip(TASKS, recipe_predictions(b, batch["image"].shape)):
            metrics[task].update(pred, batch["targets"][task])
    seg, depth, normal = (metrics[t].compute() for t in TASKS)
    ours = [float(seg["miou"]) / 100, float(seg["pix_acc"]) / 100]
    np.testing.assert_allclose(ours, [ref["miou"], ref["pix_acc"]], rtol=1e-6)
    values = [float(v) for v in list(depth.values())[:2]] + [float(v) for v in list(normal.values())[:2]]
    values += [float(v) / 100 for v in list(normal.values())[2:5]]
    np.testing.assert_allclose(values, ref["mean_of_batch_means"], rtol=1e-5, atol=1e-2)


def test_batchnorm_settings_match_reference(fixture_root):
    """Momentum, eps and affine of every BatchNorm of our protocol model are the reference model's."""
    ref = load_reference(LINEAGE, "metrics")["batchnorm"]
    suite = protocol_suite(fixture_root)
    bns = [m for m in create_model(suite, create_datamodule(suite).tasks).modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == ref["count"]
    assert sorted({m.momentum for m in bns}) == ref["momentum"]
    assert sorted({m.eps for m in bns}) == ref["eps"]
    assert sorted({m.affine for m in bns}) == ref["affine"]
    assert sorted({m.track_running_stats for m in bns}) == ref["track_running_stats"]


METHOD_WEIGHTS = {"mgda": ("mgda", 1e-4, 2e-3, 1e-3), "imtl": ("imtl_g", 1e-5, 1e-4, 1e-6),
                  "nashmtl": ("nash_mtl", 1e-5, 2e-3, 1e-6)}
"""Reference method -> (our method, rtol on step 1, rtol after, atol) for the weight-rule replay of
``methods.json``: nash-mtl's MGDA solver runs on float32 gradients and stops its Frank-Wolfe iterations early
(MAX_ITER 250, STOP_CRIT 1e-5), so a weight it leaves at 0 is ~1e-4 in ours; its Nash-MTL CCCP stops at 1e-3."""


def reference_scale(ref_method: str, gramian: np.ndarray, theirs: np.ndarray) -> float:
    """Our weights = the reference's x this: ``WEIGHT_SCALE``; Nash-MTL the clip factor
    ``min(1, 1 / (|d| + 1e-6))`` of nash-mtl's ``clip_grad_norm_(shared, max_norm=1.0)``, with the reference's
    own ``|d| = sqrt(alpha^T G alpha)`` (ours folds the clip into the weights, docs/methods.md §0.4)."""
    if ref_method == "nashmtl":
        return min(1.0, 1.0 / (math.sqrt(float(theirs @ gramian @ theirs)) + 1e-6))
    return WEIGHT_SCALE.get(ref_method, 1.0)


@pytest.mark.parametrize("ref_method", list(METHOD_WEIGHTS))
def test_method_weights_match_reference_weight_methods(fixture_root, ref_method):
    """nash-mtl's own ``WeightMethods`` (``methods.json``, driver ``record_methods.py``: 25 steps of a small
    linear problem whose Gramians change every step) against our method with the protocol's hyper-parameters,
    fed the same Gramians in order (Nash-MTL warm-starts from its previous alpha in both): the weights to the
    stated rtol (``METHOD_WEIGHTS``: nash-mtl's CCCP/ECOS stops early; its MGDA works in float32). A changed
    scale convention (MGDA summing to T, Nash-MTL normalised or not clipped) fails here."""
    record = load_reference(LINEAGE, "methods")
    steps = record["methods"][ref_method]
    assert len(steps) == record["steps"] >= 20
    ours_name, rtol1, rtol, atol = METHOD_WEIGHTS[ref_method]
    suite = protocol_suite(fixture_root)
    method = create(ours_name, len(TASKS), **resolved_hparams(suite, method_config(suite, ref_method)))
    for i, step in enumerate(steps):
        gramian = np.array(step["gramian"])
        theirs = np.array(step["weights"])
        ours = method.gramian_weights(torch.tensor(gramian), torch.tensor(step["losses"])).numpy()
        expected = theirs * reference_scale(ref_method, gramian, theirs)
        np.testing.assert_allclose(ours, expected, rtol=rtol1 if i == 0 else rtol, atol=atol,
                                   err_msg=f"{ref_method} step {i + 1}")
        if ref_method == "nashmtl":
            assert step["shared_grad_norm"] == pytest.approx(math.sqrt(float(ours @ gramian @ ours)), rel=1e-4)


TRAJECTORY_WEIGHTS = {"nashmtl": ("nash_mtl", 2e-3, 1e-6), "mgda": ("mgda", 2e-3, 1e-3),
                      "cagrad": ("cagrad", 2e-3, 1e-6)}
"""Reference method -> (our method, rtol, atol) for the weights on the recorded SegNet-MTAN Gramians: the
reference solvers' tolerances (Nash-MTL's CCCP/ECOS 1e-3, MGDA's Frank-Wolfe in float32, CAGrad's SLSQP at
scipy's default ftol 1e-6 with finite-difference gradients)."""


def recorded_gramian_and_weights(ref_method: str, step: dict) -> tuple[np.ndarray, np.ndarray]:
    """The Gramian the reference method solved on at this step (its own float32 products, recorded by the
    driver) and its weights in our convention: Nash-MTL ``alpha`` x its clip factor (the recorded Gramian is
    ``G^T G / |G^T G|``, times the normalisation factor back); MGDA ``sol * T / T``; CAGrad the weights of its
    direction ``T (g_0 + lambda g_w) / (1 + c^2)``, ``lambda = (c |g_0| + 1e-8) / (|g_w| + 1e-8)`` (nash-mtl's
    ``CAGrad.cagrad`` and ``overwrite_grad``, with its SLSQP ``w``)."""
    if ref_method == "nashmtl":
        gramian = np.array(step["nash"]["gtg"]) * step["nash"]["normalization_factor"]
        alpha = np.array(step["nash"]["alpha"])
        return gramian, alpha * reference_scale(ref_method, gramian, alpha)
    gramian = np.array(step["method_gramian"])
    if ref_method == "mgda":
        return gramian, np.array(step["weights"]) * WEIGHT_SCALE.get("mgda", 1.0)
    w, c, t = np.array(step["cagrad_w"]), 0.4, len(gramian)
    lam = (c * math.sqrt(gramian.mean() + 1e-8) + 1e-8) / (math.sqrt(float(w @ gramian @ w)) + 1e-8)
    return gramian, t * (1 / t + lam * w) / (1 + c**2)


@pytest.mark.parametrize("ref_method", [m for m in TRAJECTORY_WEIGHTS if m in RECORDED])
def test_method_weights_on_recorded_segnet_gramians(fixture_root, ref_method):
    """Our method with the protocol's hyper-parameters, fed in order the Gramians the reference method solved
    on over its recorded SegNet-MTAN run (``<method>.json``, >= 20 steps where recorded), returns the
    reference's weights at every step to its solver's tolerance (``TRAJECTORY_WEIGHTS``); separates the weight
    rule from the model's float drift that the slow replay carries."""
    steps = load_reference(LINEAGE, ref_method)["steps"]
    if not {"nash", "method_gramian"} & set(steps[0]):
        pytest.skip(f"{ref_method}.json ({len(steps)} steps) predates the driver's solver-Gramian hooks")
    ours_name, rtol, atol = TRAJECTORY_WEIGHTS[ref_method]
    suite = protocol_suite(fixture_root)
    method = create(ours_name, len(TASKS), **resolved_hparams(suite, method_config(suite, ref_method)))
    for i, step in enumerate(steps):
        gramian, expected = recorded_gramian_and_weights(ref_method, step)
        ours = method.gramian_weights(torch.tensor(gramian), torch.tensor(step["losses"])).numpy()
        np.testing.assert_allclose(ours, expected, rtol=rtol, atol=atol, err_msg=f"{ref_method} step {i + 1}")


def imtl_closed_form(grads: torch.Tensor) -> torch.Tensor:
    """IMTL-G's weights from per-task gradients [T, n] (Liu et al. 2021, ICLR, Eq. 9): with D = g_1 - g_t and
    U = u_1 - u_t (u unit vectors), t >= 2, alpha_{2:T} = g_1 U^T (D U^T)^-1 and alpha_1 = 1 - sum alpha_{2:T},
    in the dtype of ``grads``."""
    d = grads[0] - grads[1:]
    u = grads[0] / grads[0].norm() - grads[1:] / grads[1:].norm(dim=1, keepdim=True)
    rest = (grads[0] @ u.T) @ torch.linalg.inv(d @ u.T)
    return torch.cat([1 - rest.sum().unsqueeze(0), rest])


@pytest.mark.slow
def test_imtl_step1_weights_are_the_float32_closed_form(fixture_root, monkeypatch):
    """The IMTL-G step-1 tolerance (``STEP1_OVERRIDES``) is the reference's float32 arithmetic: on our step-1
    per-task gradients of the shared parameters, the closed form in float32 gives the weights nash-mtl recorded
    (measured 2e-5), in float64 ours (measured 1e-13); the two differ by up to 5.8e-3."""
    ref = load_reference(LINEAGE, "imtl")
    suite = protocol_suite(fixture_root)
    dm = create_datamodule(suite)
    model = reference_model(suite, dm).train()
    module = protocol_module(suite, "imtl", model)
    losses = module.task_losses(next(iter(mtan_replay_loader(dm, ref, monkeypatch))))
    shared = model.shared_parameters()
    grads = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
                         for loss in losses])
    theirs = np.array(ref["steps"][0]["weights"])
    np.testing.assert_allclose(imtl_closed_form(grads).numpy(), theirs, rtol=1e-4)
    exact = imtl_closed_form(grads.double())
    ours = module.method.gramian_weights(grads.double() @ grads.double().T, losses.detach().double())
    np.testing.assert_allclose(ours.numpy(), exact.numpy(), rtol=1e-10)
    assert np.abs(exact.numpy() / theirs - 1).max() < STEP1_OVERRIDES["imtl"]["weight"]


def run_replay(fixture_root, ref_method: str, monkeypatch, first_step_only: bool = False
               ) -> tuple[StepRecorder, MTOModule, object]:
    """Our protocol path on the recorded run: all its epochs, or (``first_step_only``) one step, no evaluation;
    with the reference's thread count (``REFERENCE_THREADS``)."""
    ref = load_reference(LINEAGE, ref_method)
    epochs = 1 if first_step_only else len(ref["epochs"])
    suite = protocol_suite(fixture_root, epochs)
    dm = create_datamodule(suite)
    torch.manual_seed(0)
    module = protocol_module(suite, ref_method, reference_model(suite, dm))
    if ref_method == "pcgrad":
        orders = iter(s["pcgrad_orders"] for s in ref["steps"])
        module.method.permutations = lambda: next(orders)
    recorder = StepRecorder(TASKS)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                        num_sanity_val_steps=0, callbacks=[recorder],
                        **({"limit_train_batches": 1, "limit_val_batches": 0} if first_step_only else {}))
    threads = torch.get_num_threads()
    torch.set_num_threads(REFERENCE_THREADS)
    try:
        trainer.fit(module, train_dataloaders=mtan_replay_loader(dm, ref, monkeypatch),
                    val_dataloaders=[dm.val_dataloader(), dm.test_dataloader()])
    finally:
        torch.set_num_threads(threads)
    return recorder, module, dm


def per_batch_metrics(module: MTOModule, dm) -> list[float]:
    """Depth and normal errors as nash-mtl reports them: each metric per test batch, then the mean over batches
    (abs err, rel err, mean, median, <11.25, <22.5, <30; fractions, not percent)."""
    model, specs = module.model.eval(), {t.name: t for t in dm.tasks}
    rows = []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            z = model.encode(batch["image"])
            row = []
            for task, keys in (("depth", ["abs_err", "rel_err"]),
                               ("normal", ["normal_mean", "normal_median", None, None, None])):
                metric = T.make_metric(specs[task])
                metric.update(model.head(task, z), batch["targets"][task])
                values = list(metric.compute().values())
                row += [float(v) for v in values[:len(keys)]] if task == "depth" else \
                    [float(values[0]), float(values[1])] + [float(v) / 100 for v in values[2:5]]
            rows.append(row)
    return np.mean(rows, axis=0).tolist()


def step_pairs(mine: dict, theirs: dict, ref_method: str) -> list[tuple[str, float, float]]:
    """(quantity, ours, reference) for one step, ours brought to the reference's convention (``WEIGHT_SCALE``;
    our Nash-MTL weights, and so its head gradients, carry its clip factor, which nash-mtl applies to the shared
    gradient only: both are divided by it). ``mine`` may be another reference step (no clip factor)."""
    scale, clip = WEIGHT_SCALE.get(ref_method, 1.0), mine.get("clip_coef", 1.0)
    pairs = [("loss", a, b) for a, b in zip(mine["losses"], theirs["losses"], strict=True)]
    pairs += [("grad_norm_shared", mine["grad_norm_shared"], theirs["grad_norm_shared"] * scale),
              ("grad_norm_heads", mine["grad_norm_heads"] / clip, theirs["grad_norm_heads"] * scale),
              ("update_norm", mine["update_norm"], theirs["update_norm"]), ("lr", mine["lr"], theirs["lr"])]
    if theirs["weights"] is not None:
        pairs += [("weight", a / clip, b * scale) for a, b in zip(mine["weights"], theirs["weights"], strict=True)]
    return pairs


def noise_pairs(ref_method: str) -> list[tuple[str, dict, dict]]:
    """(method, its record, a noise run of it) for every noise run that bounds ``ref_method``: its own
    (:data:`NOISE_RUNS`), plus LS's machine run where it has none of its own, or LS's alone."""
    own = NOISE_RUNS.get(ref_method, []) if ref_method in RECORDED else []
    borrowed = [r for r in NOISE_RUNS["ls"] if not own or ("_machine" in r
                                                           and not any("_machine" in o for o in own))]
    return ([(ref_method, load_reference(LINEAGE, ref_method), load_reference(LINEAGE, r)) for r in own]
            + [("ls", load_reference(LINEAGE, "ls"), load_reference(LINEAGE, r)) for r in borrowed])


def self_deviation(ref_method: str, steps: slice) -> dict[str, float]:
    """Per step quantity, the reference's largest deviation from itself over ``steps`` of its noise runs."""
    worst: dict[str, float] = {}
    for method, run, other in noise_pairs(ref_method):
        for a, b in zip(other["steps"][steps], run["steps"][steps], strict=True):
            for key, x, y in step_pairs(a, b, method):
                worst[key] = max(worst.get(key, 0.0), rel_diff(x, y))
    if all(m == "ls" for m, _, _ in noise_pairs(ref_method)):
        worst["weight"] = max(worst.get("weight", 0.0), worst["grad_norm_shared"])
    return worst


def drift_bounds(ref_method: str) -> dict[str, float]:
    """Per step quantity after step 1: NOISE_FACTOR x the reference's largest deviation from itself
    (:func:`self_deviation`), at least MIN_DRIFT. Bounded by LS's runs alone, the weights take the shared
    gradient norm's bound (the weights are functions of the per-task gradients; LS's weights are constant)."""
    return {k: max(MIN_DRIFT, NOISE_FACTOR * v) for k, v in self_deviation(ref_method, slice(1, None)).items()}


def step1_bounds(ref_method: str) -> dict[str, float]:
    """Step-1 tolerance per gradient-derived quantity: NOISE_FACTOR x the reference's step-1 deviation from
    itself (another CPU moves the step-1 losses by 1e-6 and LS's shared gradient norm by 5.3e-3: BatchNorm over
    the 2 values of a 1 x 1 bottleneck per channel amplifies rounding); losses and lr keep their float32 bound."""
    return {k: NOISE_FACTOR * v for k, v in self_deviation(ref_method, slice(0, 1)).items()
            if k not in ("loss", "lr")}


def compare_steps(ref: dict, ours: list[dict], ref_method: str, bounds: dict[str, float]) -> dict[str, float]:
    """Max relative difference per quantity over all steps; step 1 to float32 precision (weights to the
    reference solver's tolerance), later steps within ``bounds`` (:func:`drift_bounds`)."""
    worst: dict[str, float] = {}
    noise1 = step1_bounds(ref_method)
    for i, (mine, theirs) in enumerate(zip(ours, ref["steps"], strict=False)):
        for key, a, b in step_pairs(mine, theirs, ref_method):
            d = rel_diff(a, b)
            worst[key] = max(worst.get(key, 0.0), d)
            step1 = WEIGHT_RTOL.get(ref_method, STEP1_GRAD_RTOL) if key == "weight" else \
                STEP1_RTOL if key == "loss" else STEP1_GRAD_RTOL
            step1 = max(STEP1_OVERRIDES.get(ref_method, {}).get(key, step1), noise1.get(key, 0.0))
            tol = step1 if i == 0 else max(step1, bounds[key])
            assert d <= tol, f"{ref_method} step {i + 1} {key}: ours {a} vs reference {b} (rel {d:.2e} > {tol:.1e})"
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("ref_method", replayed_methods())
def test_first_step_matches_reference(fixture_root, ref_method, monkeypatch):
    """Step 1 of every method: losses to 1e-5; weights (the stated conventions), the shared and head gradient
    norms the optimizer applied, and the update norm to 1e-4 or 3x the reference's own step-1 noise
    (:func:`step1_bounds`; at most 4.2e-2, MGDA's weights across CPUs). A changed scale convention (x T, mean
    vs sum, heads weighted or not, clipping) moves the gradient norms by far more even where Adam's step hides it."""
    recorder, _, _ = run_replay(fixture_root, ref_method, monkeypatch, first_step_only=True)
    assert len(recorder.steps) == 1
    compare_steps(load_reference(LINEAGE, ref_method), recorder.steps, ref_method, {})


METRIC_GROUPS = {"miou": [0], "pix_acc": [1], "depth": [2, 3], "normal_angle": [4, 5], "normal_within": [6, 7, 8]}
"""The trainer's test metrics (its order) grouped by what they measure; each group gets one noise level, the
largest of its members' (one pair of runs under-samples a single metric's noise)."""


def final_noise(ref_method: str) -> dict[str, float]:
    """The reference's own deviation at the end of the run, over the noise runs of every recorded method (one
    pair under-samples a chaotic run's end state: CAGrad's one pair gave the normal angles 5.7e-3, all runs
    4.0e-2): per test metric, its group's (``METRIC_GROUPS``; mIoU and pixel accuracy over every epoch, the rest at
    the end); the BN statistics' norms (one level for both) and the largest per-parameter norm. The same for every
    method: the end state's float noise is the fixture's and the run length's."""
    noise: dict[str, float] = {}

    def raise_to(key: str, level: float) -> None:
        noise[key] = max(noise.get(key, 0.0), level)

    for _, run, other in [pair for method in RECORDED for pair in noise_pairs(method)]:
        pairs = list(zip(other["epochs"], run["epochs"], strict=True))
        for members in METRIC_GROUPS.values():
            compared = pairs if members[0] < 2 else pairs[-1:]
            level = max(rel_diff(a["test_metrics"][i], b["test_metrics"][i]) for a, b in compared for i in members)
            for i in members:
                raise_to(f"metric_{i}", level)
        bn = max(rel_diff(other["final"][k], run["final"][k]) for k in ("running_mean_norm", "running_var_norm"))
        raise_to("running_mean_norm", bn)
        raise_to("running_var_norm", bn)
        theirs = other["final"]["param_norms"]
        raise_to("param_norm", max(rel_diff(theirs[n], v) for n, v in run["final"]["param_norms"].items()))
    return noise


def bound(noise: float) -> float:
    return max(MIN_DRIFT, NOISE_FACTOR * noise)


@pytest.mark.slow
@pytest.mark.parametrize("ref_method", replayed_methods())
def test_replay_matches_reference(fixture_root, ref_method, monkeypatch):
    """The whole recorded run (>= 20 steps where recorded): per-step losses, weights, gradient/update norms and
    lr; per-epoch mIoU and pixel accuracy (one confusion matrix per test pass, in both); the final depth and
    normal errors (per-batch means, the reference's aggregation); the BN running statistics and every
    parameter's norm at the end. Step 1 to float32 precision, the rest within :data:`NOISE_FACTOR` x the
    reference's own noise (:func:`drift_bounds`, :func:`final_noise`)."""
    ref = load_reference(LINEAGE, ref_method)
    recorder, module, dm = run_replay(fixture_root, ref_method, monkeypatch)
    assert len(recorder.steps) == len(ref["steps"])
    worst = compare_steps(ref, recorder.steps, ref_method, drift_bounds(ref_method))
    print(f"{ref_method}: max rel. diff per quantity over {len(ref['steps'])} steps: {worst}")
    noise = final_noise(ref_method)
    assert len(module.stats.history) == len(ref["epochs"])
    for entry, theirs in zip(module.stats.history, ref["epochs"]):
        ours = [entry["test"]["semseg/miou"] / 100, entry["test"]["semseg/pix_acc"] / 100]
        for i, value in enumerate(ours):
            assert rel_diff(value, theirs["test_metrics"][i]) <= bound(noise[f"metric_{i}"]), (i, value, theirs)
    final = ref["epochs"][-1]["test_metrics"]
    for i, value in enumerate(per_batch_metrics(module, dm), start=2):
        assert rel_diff(value, final[i]) <= bound(noise[f"metric_{i}"]), (i, value, final[i])
    bns = [m for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for key, attr in (("running_mean_norm", "running_mean"), ("running_var_norm", "running_var")):
        norm = math.sqrt(sum(float(getattr(m, attr).double().square().sum()) for m in bns))
        assert rel_diff(norm, ref["final"][key]) <= bound(noise[key]), key
    assert int(bns[0].num_batches_tracked) == ref["final"]["num_batches_tracked"]
    params = dict(module.model.named_parameters())
    for name, norm in ref["final"]["param_norms"].items():
        ours = float(params[mtan_name(name, TASKS)].detach().double().norm())
        assert rel_diff(ours, norm) <= bound(noise["param_norm"]), name
