"""Differential test of protocol P2 (``configs/protocols/libmtl_nyuv2_deeplab.yaml``) against LibMTL's NYUv2 trainer.

``tests/reference/libmtl_nyuv2/`` holds what median-research-group/LibMTL's ``Trainer`` (HPS, ``rep_grad`` False,
``resnet_dilated('resnet50')`` + ``DeepLabHead`` decoders, the losses and metrics of ``examples/nyu/utils.py``,
Adam 1e-4 / weight decay 1e-5, StepLR(100, 0.5)) produced on the MTAN-format fixture
``tests.fixtures_mtan.write_nyuv2(n_train=8, n_val=5, 32 x 32, seed 0)``, per weighting method, 20 steps (5 epochs)
of batch 2, or 8 (2 epochs) where ``header.json`` says so (provenance, the run's changes, the CPU it ran on).
Our side takes the protocol config, our NYUv2 datamodule (no augmentation, as LibMTL's ``--aug`` default), our
DeepLab-ResNet-50 (the same initial weights through :func:`libmtl_name`), our losses, metrics, optimizer, LR
schedule and methods, and must reproduce it.

Both sides re-seed torch (``1000 + k``) before the k-th train-mode encoder call, so the heads' dropout masks agree.
Where the protocol's settings differ from LibMTL's the test runs LibMTL's (:data:`REFERENCE_SETTINGS`) and the
difference stands in the protocol file. The fast tests check the data, the parameter map and counts, BatchNorm,
the step-1 losses, the loss and metric functions and the LR schedule; the replays are ``slow``. Where LibMTL is
importable (it is not in CI) its Trainer also runs live. Every method's weight rule is replayed against LibMTL's
weighting classes in ``tests/test_reference_libmtl_methods.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from benchmark import tasks as T
from benchmark.config import load_suite
from benchmark.methods import create
from benchmark.methods.presets import resolve
from benchmark.module import MTOModule
from benchmark.runner import create_datamodule, create_model, module_config, resolved_hparams
from tests.fixtures_mtan import write_nyuv2
from tests.reference_replay import ReplaySampler, StepRecorder, check_fixture, load_reference, recipe_, rel_diff

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "configs" / "protocols" / "libmtl_nyuv2_deeplab.yaml"
LINEAGE = "libmtl_nyuv2"
TASKS = ["semseg", "depth", "normal"]
REF_TASKS = {"segmentation": "semseg", "depth": "depth", "normal": "normal"}
METHODS = {"EW": ("ew", "EW"), "MGDA": ("mgda", "MGDA"), "PCGrad": ("pcgrad", "PCGrad"),
           "CAGrad": ("cagrad", "CAGrad"), "IMTL": ("imtl_h", "IMTL"), "Nash_MTL": ("nash_mtl", "Nash-MTL"),
           "Aligned_MTL": ("aligned_mtl", "Aligned-MTL"), "DB_MTL": ("db_mtl", "DB-MTL"),
           "FAMO": ("famo", None), "FairGrad": ("fairgrad", None)}
"""LibMTL weighting -> (our method, the protocol's label; None: not in the protocol, built with the libmtl preset)."""
REFERENCE_SETTINGS = {
    "IMTL": {"grad_source": "params"},
    "PCGrad": {"include_self": True},
    "Nash_MTL": {"head_weighting": "weighted", "max_norm": None},
    "FAMO": {"bn_update": True},
}
"""Where the protocol (its ``libmtl`` preset) differs from LibMTL's ``rep_grad=False`` HPS run, the test runs LibMTL's
setting: IMTL on the shared parameters' gradients (the protocol: ``rep_batchsum``, LibMTL's ``rep_grad=True``
mode); PCGrad also projects ``g_i^PC`` on its own ``g_i`` (LibMTL's shuffled order includes ``i``); Nash-MTL
back-propagates ``sum_t alpha_t L_t`` with the unclipped ``alpha`` (heads weighted by it) and then clips the shared
gradient alone (:data:`REFERENCE_TRAIN`), where ours folds the clip into the weights (heads and reported weights
then carry the factor ``1 / |d| = 1 / sqrt(T)``); FAMO's after-step forward pass updates the BatchNorm statistics
(LibMTL's trainer runs it in train mode)."""
REFERENCE_TRAIN = {"Nash_MTL": {"clip_shared_grad_norm": 1.0}}
"""The ``train`` settings of LibMTL's run where the protocol's differ: Nash-MTL's
``clip_grad_norm_(shared, max_norm=1.0)`` after its backward."""
NO_WEIGHTS = {"CAGrad": "LibMTL returns the inner solution w, not the weights of the applied update",
              "DB_MTL": "LibMTL returns ones"}
RECORDED = [m for m in METHODS if m in load_reference(LINEAGE, "header")["methods"]]
"""The methods with a stored full-model run (header ``methods``: steps, threads, CPU seconds); every method's weight
rule is also replayed against LibMTL's class in ``tests/test_reference_libmtl_methods.py``."""
REPLAY_XFAIL = {
    "CAGrad": "LibMTL's CAGrad does not solve its inner problem on this model: scipy's SLSQP, given the raw "
              "Gramian (entries ~1e6), reports success at its start w = (1/3, 1/3, 1/3) on 15 of the 20 recorded "
              "steps (step 1 included; test_libmtl_cagrad_update_is_its_start_point), so its update there is "
              "1.2 g_0; the same call on the step-1 Gramian scaled by 1e-6 moves to w = (0.50, 0, 0.50), the "
              "objective 1.50 -> 0.36 (x 1e6). Ours solves the problem: step-1 shared gradient norm 980.4 vs "
              "LibMTL's 1204.2 (1.9e-1 > 3e-4); the losses (3.7e-2) and update norms (8.2e-3) stay within the "
              "drift bounds",
}
"""Recorded runs whose slow replay is a strict xfail, with the measured cause."""


def replay_params() -> list:
    """:data:`RECORDED`, each of :data:`REPLAY_XFAIL` marked a strict xfail."""
    return [pytest.param(m, marks=pytest.mark.xfail(reason=REPLAY_XFAIL[m], strict=True)) if m in REPLAY_XFAIL
            else m for m in RECORDED]


BASE = "EW"
"""The recorded run whose data, parameter shapes and first step the fast tests use."""
WEIGHT_RTOL = {"MGDA": 3e-3, "Nash_MTL": 3e-3, "IMTL": 2e-3, "PCGrad": 2e-3, "Aligned_MTL": 1e-3, "FairGrad": 3e-3}
"""Step-1 weights, per element. LibMTL computes its rules on float32 task gradients in float32, ours in float64;
:func:`test_float32_rules_give_libmtl_step1_weights` shows that this is the gap. Its float32 Gramian has a
diagonal 3.2-4.0e-3 below the float64 one (sums of 23.5M squares): the Nash equation ``G alpha = 1 / alpha``
solved on it gives LibMTL's FairGrad weights to 1e-7 and its Nash-MTL weights to 1e-4 (its CCCP stop), on the
float64 Gramian ours to 1e-13; measured 2.2e-3 for both (LibMTL's alpha is 1.0018-1.0023 x ours). IMTL and
PCGrad (float32 dot products and inverse): measured 1.3e-3 and 9.1e-4. MGDA: LibMTL's Frank-Wolfe also stops at a
change < 1e-5 (ours solves to 1e-10): measured 1.6e-3 on the smallest weight (0.0386, 6e-5 absolute), while the
min-norm value |G w| itself (the shared gradient norm, stationary in w at the optimum) agrees to 1.2e-7.
Aligned-MTL: measured 4.6e-4 (LibMTL's eigendecomposition of the float32 Gramian; presumably the same cause, not
shown)."""
HEADS_WEIGHTED = {"Nash_MTL", "FairGrad"}
"""Methods whose reference run weights the heads' losses by the method's weights (Nash-MTL: :data:`REFERENCE_TRAIN`;
FairGrad: ``sum_t w_t L_t`` back-propagated): their head gradient norms carry the step-1 weight bound of
:data:`WEIGHT_RTOL`."""
SHARED_WEIGHTED = {"FairGrad"}
"""Methods whose shared gradient is ``sum_t w_t g_t`` with weights off by a common factor (the float32 Gramian's
scale, above), not renormalised: their step-1 shared gradient norm carries the weight bound (FairGrad: 1.9e-3;
Nash-MTL clips it to 1)."""
STEP1_RTOL = 1e-5
STEP1_GRAD_RTOL = 3e-4
"""Gradient and update norms on step 1 (float64 reductions on both sides). EW, same CPU as the record: shared and
head gradient norms 1.4e-8 / 2e-14, update norm 5e-9; the bound leaves room for the methods whose step-1
gradient follows float32 per-task gradients through a weight rule."""
DRIFT_RTOL = {"loss": 5e-2, "update_norm": 2e-2, "lr": 0.0}
"""The bounds after step 1: 1.5-2x LibMTL's own noise (header ``reference_noise``, the larger of its EW run on two
CPUs and its FAMO run with other float32 kernels: losses 3.3e-2, update norms 1.1e-2 over 20 steps;
:func:`test_bounds_cover_the_reference_noise`). Our replays against the records made on the same CPU: losses at
most 4.6e-2 (PCGrad; EW 3.9e-2, mean 1.6e-2, as LibMTL against itself: mean 1.4e-2), update norms 1.8e-2
(DB-MTL)."""
GRAD_RTOL = 2e-2
GRAD_STEPS: dict[str, int] = {}
"""The gradient norms, and the weights of a gradient method (a function of the gradients), are held to
:data:`GRAD_RTOL` on the first ``GRAD_STEPS`` steps only (default 1), and to nothing after: the float32 gradient
of this model at batch 2 carries a rounding error of a few percent (the previous record: float32 shared gradient
norm 2807.6 vs 2870.6 in float64, 2.2%), which a parameter change at float noise reshuffles. EW on the same CPU:
step 1 agrees to 1.4e-8, step 2 (losses within 8e-6, the parameters within Adam's float noise) already differs
by 6.8e-2, later steps by up to 200%; LibMTL against itself on two CPUs: 31% on step 2, up to 176%. MGDA's
min-norm weights switch faces of the simplex when the Gramian moves, so its weights and shared gradient norm move
by factors after step 1 while losses and update norms stay within the drift bounds."""
FINAL_RTOL = {"bn": 6e-3, "param": 5e-2}
"""After the last step: BN running statistics and parameter norms; about twice LibMTL's own noise (header
``reference_noise``: 3.0e-3 and 3.1e-2). Our replays on the record's CPU: at most 4.2e-3 (FAMO's running
variance; it updates BN twice a step; DB-MTL 5.0e-3) and 3.1e-2 (DB-MTL), the last conv biases apart (up to
1.0e-1 relative, 8.3e-4 absolute: :data:`PARAM_ATOL`)."""
PARAM_ATOL = 1e-3
"""Added to the parameter-norm bound: ten lr-sized Adam steps on one element. The last conv biases (3 elements,
norm 0.008) move by Adam's sign-like steps of about 1e-4 per element, which gradient noise flips: LibMTL against
itself on two CPUs 3.1e-2 on ``decoders.normal.4.bias``; our replays up to 1.0e-1 there (FairGrad, 8.3e-4
absolute)."""
METRIC_TOL = (1e-2, 5e-3)
CROSS_CPU_METRIC_ATOL = 1.2e-2
""":data:`METRIC_TOL`'s atol where this CPU's capability is not the records' (:data:`CROSS_CPU_RTOL`): LibMTL's FAMO
run on an AVX512 CPU against its AVX2 record moved the first epoch's pixAcc by 5.7e-3 (header ``reference_noise``;
our FAMO replay there: 5.9e-3 from the record, 2e-4 from LibMTL's own run on that CPU)."""
"""(rtol, atol) of the test metrics after the first epoch (mIoU, pixAcc as fractions; depth errors; normal angles
in degrees). LibMTL against itself on two CPUs: within 1.1e-3 absolute, normal angles within 0.21 degrees;
our EW replay: 2.1e-3 (mIoU 0.0076 vs 0.0097, a near-chance score on 5 images), 0.30 degrees."""
REFERENCE_THREADS = 1
"""The torch thread count of the records (header ``methods``: ``OMP_NUM_THREADS=1``); the replay runs with it
too (with 2 threads MGDA's step-1 weights moved by 1.0e-2, its shared gradient norm by 1.2e-3)."""
CROSS_CPU_RTOL = {"loss": 3e-5, "grad": 2e-1}
"""Used where this CPU's capability (``torch.backends.cpu.get_cpu_capability()``) is not the one the record was
made on (header ``environment.cpu_capability``): the convolutions then take other float32 kernels, and step 1 is
no longer bit-for-bit LibMTL's. Measured on LibMTL alone: its EW run recorded on an AVX512 machine against the
same run on the AVX2 machine of the stored records: step 1 losses 1.2e-5, shared / head gradient norms 6.8e-2 /
1.7e-2, update norm 1.2e-4, MGDA's and Nash-MTL's weights 9.4e-2 / 7.5e-2; after 20 steps (EW) losses 2.3e-2,
update norms 6.8e-3, BN running variance 2.1e-3, parameter norms 3.1e-2. These bounds (about twice the measured
noise) replace the step-1 ones on such a CPU; the later bounds stand."""
DROPOUT_SEED = 1000
LIBMTL_ROOT = "MTOBENCH_LIBMTL_ROOT"
"""A LibMTL checkout (with examples/nyu) whose Trainer the live test runs; LibMTL==1.1.5 from PyPI alone cannot:
it ships no examples/nyu, does not import with torchvision >= 0.13 and lacks five of the methods."""
DRIVER = ROOT / "tests" / "reference" / LINEAGE / "driver" / "record_libmtl.py"


def same_cpu() -> bool:
    """Whether this CPU has the capability the records were made on (:data:`CROSS_CPU_RTOL`)."""
    recorded = load_reference(LINEAGE, "header")["environment"].get("cpu_capability")
    return torch.backends.cpu.get_cpu_capability() == recorded


def libmtl_name(ref_name: str) -> str:
    """LibMTL ``HPS`` parameter/buffer name -> ``models.deeplab.DeepLabResNet`` name."""
    if ref_name.startswith("encoder."):
        return ref_name
    m = re.match(r"decoders\.(\w+)\.(.*)", ref_name)
    if m is None or m[1] not in REF_TASKS:
        raise KeyError(f"no mapping for reference name {ref_name!r}")
    head, rest = f"heads.{REF_TASKS[m[1]]}", m[2]
    for pattern, repl in ((r"0\.convs\.([0-3])\.", r"0.branches.\1."), (r"0\.convs\.4\.", "0.pool."),
                          (r"0\.project\.", "0.project."), (r"([124])\.", r"\1.")):
        if re.match(pattern, rest):
            return f"{head}.{re.sub(pattern, repl, rest, count=1)}"
    raise KeyError(f"no mapping for reference name {ref_name!r}")


@pytest.fixture(scope="module")
def header() -> dict:
    return load_reference(LINEAGE, "header")


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory, header) -> Path:
    return check_fixture(write_nyuv2(tmp_path_factory.mktemp("nyuv2"), **header["fixture"]["kwargs"]),
                         header["fixture"], "*.npy")


def protocol_suite(root: Path, epochs: int | None = None):
    """The protocol file as shipped, pointed at the fixture (its size, no worker processes, CPU) with the recorded
    batch size (2; the protocol's 8 needs more than the fixture's 8 images for 20 steps)."""
    suite = load_suite(PROTOCOL)
    suite.dataset.params.update(root=str(root), height=32, width=32, check_sizes=False, num_workers=0)
    suite.train.batch_size = load_reference(LINEAGE, BASE)["batch_size"]
    if epochs is not None:
        suite.train.epochs = epochs
    suite.train.accelerator = "cpu"
    return suite


def protocol_method(suite, ref_method: str, settings: dict | None = None):
    """Our method as ``benchmark.runner.train_one`` builds it from the suite (the libmtl preset for a method the
    protocol does not list), with :data:`REFERENCE_SETTINGS` (or ``settings``, if given)."""
    name, label = METHODS[ref_method]
    if label is None:
        hparams = resolve(suite.preset, name, {})
    else:
        hparams = resolved_hparams(suite, next(m for m in suite.methods if m.key == label))
    settings = REFERENCE_SETTINGS.get(ref_method, {}) if settings is None else settings
    return create(name, len(TASKS), **{**hparams, **settings})


def protocol_module(suite, ref_method: str, model) -> MTOModule:
    """The protocol's module for the replay of ``ref_method``, with :data:`REFERENCE_TRAIN`."""
    config = dataclasses.replace(module_config(suite, log_every_n_steps=0), **REFERENCE_TRAIN.get(ref_method, {}))
    return MTOModule(model, create_datamodule(suite).tasks, protocol_method(suite, ref_method), config)


def reseed_dropout(model) -> dict[str, int]:
    """Re-seed torch before every train-mode encoder call, as the reference driver does; returns the call count."""
    calls = {"n": 0}

    def hook(module, inputs):
        if module.training:
            torch.manual_seed(DROPOUT_SEED + calls["n"])
            calls["n"] += 1

    model.encoder.register_forward_pre_hook(hook)
    return calls


@pytest.fixture(scope="module")
def suite(fixture_root):
    return protocol_suite(fixture_root)


@pytest.fixture(scope="module")
def initial_model(suite):
    """Our protocol model with the reference's initial weights (recipe keyed by reference names, mapped to ours);
    shared by the fast tests that only read it or run it without a step."""
    model = create_model(suite, create_datamodule(suite).tasks)
    ours = dict(model.named_parameters())
    recipe_({ref: ours[libmtl_name(ref)] for ref in load_reference(LINEAGE, BASE)["param_shapes"]
             if ref.startswith(("encoder.", "decoders."))})
    return model


def reference_model(suite, dm, initial: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, int]]:
    """A fresh protocol model holding ``initial``'s state, and its dropout re-seeding counter."""
    model = create_model(suite, dm.tasks)
    model.load_state_dict(initial.state_dict())
    return model, reseed_dropout(model)


def replay_loader(dm, ref: dict) -> torch.utils.data.DataLoader:
    """Our training loader (its dataset, augmented if the protocol says so) over the reference's batch order."""
    ds = dm.train_dataloader().dataset
    n = len(ds)
    position = {file_id: i for i, file_id in enumerate(ds.ids)}
    train = [position[s["index"]] for s in ref["samples"]["train"]]
    keys = [[(e, i) for i in train[e * n:(e + 1) * n]] for e in range(len(train) // n)]
    return torch.utils.data.DataLoader(ds, batch_size=dm.batch_size, sampler=ReplaySampler(keys),
                                       drop_last=dm.drop_last)


def sample_sums(image: torch.Tensor, targets: dict) -> list[float]:
    return [float(x.double().sum()) for x in (image, targets["semseg"], targets["depth"], targets["normal"])]


def test_batches_match_reference_order_and_values(fixture_root):
    """Every training sample LibMTL fetched (no crop, no flip: float32 image, labels, depth, normals), summed per map,
    equals ours; the test split in file order likewise."""
    ref = load_reference(LINEAGE, BASE)
    dm = create_datamodule(protocol_suite(fixture_root))
    loader = replay_loader(dm, ref)
    ours = []
    for epoch in range(len(loader.sampler.keys)):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            for b in range(batch["image"].shape[0]):
                ours.append(sample_sums(batch["image"][b], {k: v[b] for k, v in batch["targets"].items()}))
    train = ref["samples"]["train"]
    assert len(ours) == len(train) == 2 * len(ref["steps"]) >= 40
    for i, (mine, theirs) in enumerate(zip(ours, train)):
        np.testing.assert_allclose(mine, theirs["sums"], rtol=1e-6, atol=1e-3, err_msg=f"train sample {i}: {theirs}")
    test = [sample_sums(b["image"][i], {k: v[i] for k, v in b["targets"].items()})
            for b in dm.test_dataloader() for i in range(b["image"].shape[0])]
    np.testing.assert_allclose(test, [s["sums"] for s in ref["samples"]["test"][:len(test)]], rtol=1e-6, atol=1e-3)


def test_parameter_map_and_counts_are_exact(initial_model):
    ref = load_reference(LINEAGE, BASE)
    model = initial_model
    ours = {n: list(p.shape) for n, p in model.named_parameters()}
    assert {libmtl_name(n): shape for n, shape in ref["param_shapes"].items()} == ours
    assert sum(p.numel() for p in model.parameters()) == ref["param_count"] == 71_888_721
    assert sum(p.numel() for p in model.shared_parameters()) == ref["encoder_param_count"] == 23_508_032
    assert sorted(libmtl_name(n) for n in ref["buffer_names"]) == sorted(n for n, _ in model.named_buffers())


def test_batchnorm_settings_match_reference(initial_model):
    """Momentum, eps and affine of every BatchNorm of our protocol model are LibMTL's."""
    ref = load_reference(LINEAGE, BASE)["batchnorm"]
    bns = [m for m in initial_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == ref["count"]
    assert sorted({m.momentum for m in bns}) == ref["momentum"]
    assert sorted({m.eps for m in bns}) == ref["eps"]
    assert sorted({m.affine for m in bns}) == ref["affine"]
    assert sorted({m.track_running_stats for m in bns}) == ref["track_running_stats"]


def test_step1_losses_match(suite, initial_model):
    """One train-mode forward on the reference's first batch (its dropout draw): the three masked losses; the
    BatchNorm statistics are left as they were."""
    ref = load_reference(LINEAGE, BASE)
    dm = create_datamodule(suite)
    batch = next(iter(replay_loader(dm, ref)))
    module = protocol_module(suite, "EW", initial_model)
    with torch.no_grad(), module._frozen_bn():
        torch.manual_seed(DROPOUT_SEED)
        losses = module.task_losses(batch)
    np.testing.assert_allclose(losses.tolist(), ref["steps"][0]["losses"],
                               rtol=STEP1_RTOL if same_cpu() else CROSS_CPU_RTOL["loss"])


def test_lr_schedule_matches_reference_steplr(initial_model):
    """Our per-batch schedule over the protocol's 200 epochs of 795 // 8 batches (drop_last) gives, at every epoch,
    LibMTL's StepLR (its recorded arguments, stepped once per epoch as its trainer does)."""
    ref = load_reference(LINEAGE, BASE)
    suite = load_suite(PROTOCOL)
    suite.train.accelerator = "cpu"
    module = MTOModule(initial_model, [], create("ew", 3), module_config(suite, log_every_n_steps=0))
    per_epoch = 795 // suite.train.batch_size
    module._trainer = SimpleNamespace(estimated_stepping_batches=per_epoch * suite.train.epochs,
                                      max_epochs=suite.train.epochs)
    ours = module.configure_optimizers()
    optim = ref["optim_param"]
    assert (suite.train.optimizer, suite.train.lr, suite.train.weight_decay) == (optim["optim"], optim["lr"],
                                                                                 optim["weight_decay"])
    theirs_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=optim["lr"])
    sched = ref["scheduler_param"]
    theirs = torch.optim.lr_scheduler.StepLR(theirs_opt, sched["step_size"], sched["gamma"])
    factor = ours["lr_scheduler"].lr_lambdas[0]
    for epoch in range(suite.train.epochs):
        for batch in (0, per_epoch - 1):
            assert suite.train.lr * factor(epoch * per_epoch + batch) == pytest.approx(theirs.get_last_lr()[0])
        theirs.step()


def recipe_predictions(b: int, shape) -> dict[str, torch.Tensor]:
    """The predictions ``metrics.json`` was recorded with (driver/record_libmtl_metrics.py)."""
    g = torch.Generator().manual_seed(1000 + b)
    n, _, h, w = shape
    return {"semseg": torch.randn(n, 13, h, w, generator=g), "depth": 0.5 + 7.5 * torch.rand(n, 1, h, w, generator=g),
            "normal": torch.randn(n, 3, h, w, generator=g)}


def test_losses_and_metrics_match_reference_functions(suite):
    """LibMTL's SegLoss / DepthLoss / NormalLoss and SegMetric / DepthMetric / NormalMetric on fixed predictions over
    our test loader: our masked losses per batch; our split metrics (the protocol's aggregation) equal LibMTL's:
    one confusion matrix, depth errors weighted by valid pixels, normal errors pooled over every valid pixel; the
    normal median within our histogram's bin width (0.005 degrees)."""
    ref = load_reference(LINEAGE, "metrics")
    dm = create_datamodule(suite)
    options = module_config(suite).metric_options
    specs = {t.name: t for t in dm.tasks}
    metrics = {t: T.make_metric(specs[t], options) for t in TASKS}
    for b, (batch, theirs) in enumerate(zip(dm.test_dataloader(), ref["batches"], strict=True)):
        preds = recipe_predictions(b, batch["image"].shape)
        losses = [float(T.task_loss(specs[t], preds[t], batch["targets"][t])) for t in TASKS]
        np.testing.assert_allclose(losses, theirs["losses"], rtol=STEP1_RTOL, err_msg=f"batch {b} losses")
        for t in TASKS:
            metrics[t].update(preds[t], batch["targets"][t])
    scores = ref["scores"]
    seg = metrics["semseg"].compute()
    np.testing.assert_allclose([float(seg["miou"]) / 100, float(seg["pix_acc"]) / 100], scores["segmentation"],
                               rtol=1e-6)
    depth = [float(v) for v in metrics["depth"].compute().values()]
    np.testing.assert_allclose(depth[:2], scores["depth"], rtol=1e-5)
    normal = [float(v) for v in metrics["normal"].compute().values()]
    np.testing.assert_allclose(normal[:2] + [v / 100 for v in normal[2:5]], scores["normal"], rtol=1e-5, atol=5e-3)


def run_replay(fixture_root, initial: torch.nn.Module, ref_method: str, first_step_only: bool = False
               ) -> tuple[StepRecorder, MTOModule, dict[str, int]]:
    """Our protocol path on the recorded run: all its epochs, or (``first_step_only``) one step, no evaluation.
    Returns the per-step records, the trained module and its count of train-mode encoder calls."""
    ref = load_reference(LINEAGE, ref_method)
    epochs = 1 if first_step_only else ref["epochs_run"]
    suite = protocol_suite(fixture_root, epochs)
    dm = create_datamodule(suite)
    torch.manual_seed(0)
    model, calls = reference_model(suite, dm, initial)
    module = protocol_module(suite, ref_method, model)
    if ref_method == "PCGrad":
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
        trainer.fit(module, train_dataloaders=replay_loader(dm, ref),
                    val_dataloaders=[dm.val_dataloader(), dm.test_dataloader()])
    finally:
        torch.set_num_threads(threads)
    return recorder, module, calls


def compare_steps(ref: dict, ours: list[dict], ref_method: str) -> dict[str, float]:
    """Max relative difference per quantity over all steps; step 1 held to float32 precision (or, on another CPU,
    to :data:`CROSS_CPU_RTOL`), the later steps to the drift bounds. Fails listing every value out of its bound."""
    worst: dict[str, float] = {}
    failures: list[str] = []
    for i, (mine, theirs) in enumerate(zip(ours, ref["steps"], strict=False)):
        pairs = [("loss", a, b) for a, b in zip(mine["losses"], theirs["losses"])]
        pairs += [(k, mine[k], theirs[k]) for k in ("grad_norm_shared", "grad_norm_heads", "update_norm", "lr")]
        if ref_method not in NO_WEIGHTS:
            pairs += [("weight", a, b) for a, b in zip(mine["weights"], theirs["weights"])]
        for key, a, b in pairs:
            d = rel_diff(a, b)
            worst[key] = max(worst.get(key, 0.0), d)
            if i == 0:
                follows_weights = key == "weight" or (key == "grad_norm_heads" and ref_method in HEADS_WEIGHTED) \
                    or (key == "grad_norm_shared" and ref_method in SHARED_WEIGHTED)
                tol = WEIGHT_RTOL.get(ref_method, STEP1_GRAD_RTOL) if follows_weights else \
                    STEP1_RTOL if key == "loss" else STEP1_GRAD_RTOL
                if not same_cpu():
                    tol = max(tol, CROSS_CPU_RTOL["loss" if key == "loss" else "grad"])
                if d > tol:
                    failures.append(f"{ref_method} step 1 {key}: ours {a} vs reference {b} (rel {d:.2e} > {tol})")
                continue
            tol = DRIFT_RTOL.get(key, GRAD_RTOL if i < GRAD_STEPS.get(ref_method, 1) else math.inf)
            if d > tol:
                failures.append(f"{ref_method} step {i + 1} {key}: ours {a} vs reference {b} (rel {d:.2e} > {tol})")
    assert not failures, "\n".join(failures)
    return worst


def imtl_weights(grads: torch.Tensor) -> torch.Tensor:
    """IMTL-G's closed form (Liu et al. 2021, as LibMTL's IMTL.py evaluates it): ``alpha_{2..T} = g_1 U^T (D U^T)^-1``
    with ``D = g_1 - g_t``, ``U = u_1 - u_t`` (unit vectors), ``alpha_1 = 1 - sum``; in ``grads``' dtype."""
    unit = grads / grads.norm(dim=-1, keepdim=True)
    d, u = grads[:1] - grads[1:], unit[:1] - unit[1:]
    rest = grads[0] @ u.T @ torch.inverse(d @ u.T)
    return torch.cat([1 - rest.sum()[None], rest])


def pcgrad_weights(grads: torch.Tensor, orders: list[list[int]]) -> list[float]:
    """PCGrad's projections in the recorded orders (as LibMTL's PCGrad.py: ``g_i^PC -= (g_i^PC . g_j) g_j /
    (|g_j|^2 + 1e-8)`` when negative); the coefficient of each ``g_j`` in ``sum_i g_i^PC``, in ``grads``' dtype."""
    weights = [1.0] * len(grads)
    pc = grads.clone()
    for i, order in enumerate(orders):
        for j in order:
            dot = pc[i] @ grads[j]
            if dot < 0:
                coef = dot / (grads[j].norm() ** 2 + 1e-8)
                pc[i] -= coef * grads[j]
                weights[j] -= float(coef)
    return weights


def nash_weights(gramian: torch.Tensor) -> torch.Tensor:
    """The solution of ``G alpha = 1 / alpha`` (Nash-MTL's bargaining solution; FairGrad with alpha = 1) by Newton's
    method in float64."""
    a = torch.ones(len(gramian), dtype=torch.float64) / gramian.trace().sqrt()
    for _ in range(100):
        step = torch.linalg.solve(gramian + torch.diag(1 / a ** 2), gramian @ a - 1 / a)
        a = torch.maximum(a - step, a * 1e-3)
    assert (a * (gramian @ a) - 1).abs().max() < 1e-10
    return a


@pytest.mark.slow
def test_float32_rules_give_libmtl_step1_weights(suite, initial_model):
    """The step-1 weight gap of IMTL, PCGrad, FairGrad and Nash-MTL (:data:`WEIGHT_RTOL`) is float32 arithmetic: on
    our float32 task gradients of the reference's first batch, IMTL-G's closed form and PCGrad's projections
    evaluated in float32 give LibMTL's recorded weights (measured 3e-7 and 1e-7), and the Nash equation solved on
    the float32 Gramian its FairGrad and Nash-MTL weights (1e-7; 1e-4, its CCCP stop); in float64 they differ from
    LibMTL's by more than the step-1 gradient bound (measured: float64 gives our replay's weights to 1e-12,
    1.1e-3 / 9.1e-4 / 2.2e-3 from LibMTL's)."""
    if not same_cpu():
        pytest.skip("the float32 gradients are the record's only on the CPU it was made on (CROSS_CPU_RTOL)")
    dm = create_datamodule(suite)
    model, _ = reference_model(suite, dm, initial_model)
    module = protocol_module(suite, "IMTL", model)
    batch = next(iter(replay_loader(dm, load_reference(LINEAGE, "IMTL"))))
    model.train()
    with module._frozen_bn():
        torch.manual_seed(DROPOUT_SEED)
        losses = module.task_losses(batch)
    shared = list(model.shared_parameters())
    grads = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)])
                         for loss in losses])
    imtl, pcgrad = load_reference(LINEAGE, "IMTL")["steps"][0], load_reference(LINEAGE, "PCGrad")["steps"][0]
    np.testing.assert_allclose(imtl_weights(grads).tolist(), imtl["weights"], rtol=1e-5)
    np.testing.assert_allclose(pcgrad_weights(grads, pcgrad["pcgrad_orders"]), pcgrad["weights"], rtol=1e-5)
    d64 = grads.double()
    for w32, w64 in ((imtl_weights(grads).tolist(), imtl_weights(d64).tolist()),
                     (pcgrad_weights(grads, pcgrad["pcgrad_orders"]), pcgrad_weights(d64, pcgrad["pcgrad_orders"]))):
        assert max(rel_diff(a, b) for a, b in zip(w64, w32)) > 3e-4, "float64 must differ from float32 here"
    g32, g64 = (grads @ grads.T).double(), d64 @ d64.T
    for ref_method, rtol in (("FairGrad", 1e-5), ("Nash_MTL", 5e-4)):
        if ref_method in RECORDED:
            theirs = load_reference(LINEAGE, ref_method)["steps"][0]["weights"]
            np.testing.assert_allclose(nash_weights(g32).tolist(), theirs, rtol=rtol, err_msg=ref_method)
            assert max(rel_diff(a, b) for a, b in zip(nash_weights(g64).tolist(), theirs)) > 1e-3


def test_first_step_of_a_gradient_method_matches(fixture_root, initial_model):
    """Step 1 of MGDA (fast): losses, MGDA weights, the shared and head gradient norms the optimizer applied and the
    update norm. A changed scale convention (sum vs mean, heads weighted or not, clipping) moves the gradient
    norms even where Adam's step would hide it."""
    recorder, _, _ = run_replay(fixture_root, initial_model, "MGDA", first_step_only=True)
    assert len(recorder.steps) == 1
    compare_steps(load_reference(LINEAGE, "MGDA"), recorder.steps, "MGDA")


@pytest.mark.slow
@pytest.mark.parametrize("ref_method", replay_params())
def test_first_step_matches_reference(fixture_root, initial_model, ref_method):
    recorder, _, _ = run_replay(fixture_root, initial_model, ref_method, first_step_only=True)
    assert len(recorder.steps) == 1
    compare_steps(load_reference(LINEAGE, ref_method), recorder.steps, ref_method)


def test_bounds_cover_the_reference_noise(header):
    """The bounds after step 1 lie between LibMTL's own noise (its runs on two CPUs / two kernel sets, stored in the
    header) and three times it: loose enough for float noise, no looser."""
    noise = header["reference_noise"]
    runs = [v for v in noise.values() if isinstance(v, dict)]
    for bound, key in ((DRIFT_RTOL["loss"], "loss"), (DRIFT_RTOL["update_norm"], "update_norm"),
                       (FINAL_RTOL["bn"], "bn_stats"), (FINAL_RTOL["param"], "param_norm")):
        worst = max(r[key] for r in runs)
        assert worst < bound <= 3 * worst, f"{key}: bound {bound} vs LibMTL's own noise {worst}"
    assert max(r["step1_loss"] for r in runs) < CROSS_CPU_RTOL["loss"]
    worst = max(r["test_metric_abs"] for r in runs if "test_metric_abs" in r)
    assert METRIC_TOL[1] < worst < CROSS_CPU_METRIC_ATOL <= 3 * worst


def test_libmtl_cagrad_update_is_its_start_point():
    """Where LibMTL's CAGrad returns its SLSQP start ``w = 1/T`` (``g_w = g_0``), its update is
    ``(g_0 + c |g_0| g_0 / |g_0|) / (1 + c^2) = g_0 (1 + c) / (1 + c^2)``: on step 1 (same batch and weights as EW)
    the recorded shared gradient norm is that factor times EW's ``|sum_t g_t| / T``, to float32 rounding (measured
    1.2e-4: LibMTL's ``g_0`` norm comes from a float32 Gramian)."""
    header = load_reference(LINEAGE, "header")["methods"]
    if "CAGrad" not in header:
        pytest.skip("no CAGrad record")
    steps = load_reference(LINEAGE, "CAGrad")["steps"]
    c = header["CAGrad"]["weight_args"]["calpha"]
    assert steps[0]["weights"] == pytest.approx([1 / 3] * 3, abs=1e-12)
    g0 = load_reference(LINEAGE, "EW")["steps"][0]["grad_norm_shared"] / 3
    assert steps[0]["grad_norm_shared"] == pytest.approx(g0 * (1 + c) / (1 + c ** 2), rel=STEP1_GRAD_RTOL)
    at_start = sum(s["weights"] == pytest.approx([1 / 3] * 3, abs=1e-6) for s in steps)
    assert at_start == 15, f"LibMTL's SLSQP stayed at its start on {at_start} of {len(steps)} steps"


def replay_summary(recorder: StepRecorder, module: MTOModule, calls: dict[str, int]) -> dict:
    """What a replay is checked on (:func:`check_replay`): our per-step records, the test metrics after each epoch
    (LibMTL's order: mIoU, pixAcc, abs_err, rel_err, normal mean, median), the BN running statistics, the
    train-mode encoder calls and every parameter's norm (our names)."""
    bns = [m for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return {
        "steps": recorder.steps,
        "test_metrics": [[h["test"]["semseg/miou"] / 100, h["test"]["semseg/pix_acc"] / 100, h["test"]["depth/abs_err"],
                          h["test"]["depth/rel_err"], h["test"]["normal/normal_mean"],
                          h["test"]["normal/normal_median"]] for h in module.stats.history],
        **{key: math.sqrt(sum(float(getattr(m, attr).double().square().sum()) for m in bns))
           for key, attr in (("running_mean_norm", "running_mean"), ("running_var_norm", "running_var"))},
        "num_batches_tracked": int(bns[0].num_batches_tracked),
        "encoder_calls": calls["n"],
        "param_norms": {n: float(p.detach().double().norm()) for n, p in module.model.named_parameters()},
    }


def check_replay(ref: dict, ours: dict, ref_method: str) -> dict[str, float]:
    """Every step (:func:`compare_steps`), the first epoch's test metrics, the final BN statistics and parameter
    norms of :func:`replay_summary` against the recorded run; returns the worst relative differences."""
    assert len(ours["steps"]) == len(ref["steps"]) == load_reference(LINEAGE, "header")["methods"][ref_method]["steps"]
    worst = compare_steps(ref, ours["steps"], ref_method)
    assert len(ours["test_metrics"]) == len(ref["epochs"])
    theirs = ref["epochs"][0]["test_metrics"]
    np.testing.assert_allclose(ours["test_metrics"][0], theirs["segmentation"] + theirs["depth"] + theirs["normal"][:2],
                               rtol=METRIC_TOL[0], atol=METRIC_TOL[1] if same_cpu() else CROSS_CPU_METRIC_ATOL,
                               err_msg="test metrics after the first epoch")
    for key in ("running_mean_norm", "running_var_norm"):
        worst["bn"] = max(worst.get("bn", 0.0), rel_diff(ours[key], ref["final"][key]))
        assert rel_diff(ours[key], ref["final"][key]) <= FINAL_RTOL["bn"], key
    assert ours["num_batches_tracked"] == ref["final"]["num_batches_tracked"]
    assert ours["encoder_calls"] == ref["final"]["encoder_calls"]
    for name, norm in ref["final"]["param_norms"].items():
        if name.startswith(("encoder.", "decoders.")):
            mine = ours["param_norms"][libmtl_name(name)]
            worst["param"] = max(worst.get("param", 0.0), rel_diff(mine, norm))
            assert abs(mine - norm) <= FINAL_RTOL["param"] * norm + PARAM_ATOL, f"{name}: {mine} vs {norm}"
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("ref_method", replay_params())
def test_replay_matches_reference(fixture_root, initial_model, ref_method):
    """The whole recorded run (every step and epoch): per-step losses, weights, gradient/update norms and lr; the
    per-epoch test metrics (LibMTL's accumulation); the BN running statistics and every parameter's norm at the end."""
    ref = load_reference(LINEAGE, ref_method)
    check_replay(ref, replay_summary(*run_replay(fixture_root, initial_model, ref_method)), ref_method)


def live_reference(tmp_path: Path, fixture_root: Path, ref_method: str, epochs: int) -> dict:
    """LibMTL's own Trainer run now through the recording driver (``MTOBENCH_LIBMTL_ROOT``, its python importing
    LibMTL and its dependencies), on the fixture the stored data was recorded on."""
    root = os.environ.get(LIBMTL_ROOT)
    if not root:
        pytest.skip(f"{LIBMTL_ROOT} is not set: no LibMTL checkout to run live (the stored reference runs instead)")
    python = os.environ.get("MTOBENCH_LIBMTL_PYTHON", sys.executable)
    probe = subprocess.run([python, "-c", f"import sys; sys.path.insert(0, {root!r}); "
                            "sys.modules.setdefault('torch_geometric', type(sys)('torch_geometric')); import LibMTL"],
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"LibMTL from {root} does not import with {python}: {probe.stderr.strip().splitlines()[-1:]}")
    out = tmp_path / f"{ref_method}.json"
    subprocess.run([python, str(DRIVER), "--libmtl-root", root, "--fixture", str(fixture_root), "--method",
                    ref_method, "--epochs", str(epochs), "--out", str(out)], check=True, capture_output=True)
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("ref_method", ["EW", "MGDA", "DB_MTL"])
def test_live_libmtl_matches_stored_reference_and_ours(tmp_path, fixture_root, initial_model, ref_method):
    """Where LibMTL can run: its Trainer, run now for one epoch, reproduces the stored reference (same steps,
    losses and weights to float32 noise), and our first step matches the live run."""
    live = live_reference(tmp_path, fixture_root, ref_method, epochs=1)
    stored = load_reference(LINEAGE, ref_method)
    for mine, theirs in zip(live["steps"], stored["steps"]):
        np.testing.assert_allclose(mine["losses"], theirs["losses"], rtol=1e-4)
    recorder, _, _ = run_replay(fixture_root, initial_model, ref_method, first_step_only=True)
    compare_steps(live, recorder.steps, ref_method)
