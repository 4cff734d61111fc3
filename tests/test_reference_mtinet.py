"""Differential test of the CSO protocols P3 / P5 (``configs/protocols/cso_nyud.yaml``, ``cso_pascal.yaml``) against
SimonVandenhende/Multi-Task-Learning-PyTorch, the MTI-Net code the CSO paper builds on (docs/cso.md §2).

``tests/reference/mtinet_nyud/`` and ``mtinet_pascal/`` hold what that repository's own config, data loaders,
transforms, HRNet-18 multi-task baseline, losses, Adam, poly schedule, ``train_vanilla`` loop and evaluation produced
on the fixtures ``tests.fixtures_dense.write_nyud`` / ``write_pascal`` (provenance in each ``header.json``; the
driver is ``tests/reference/mtinet_nyud/driver/run_reference.py``). Our side takes the protocol file, our datamodule,
our ``hrnet18`` (the same initial weights through :func:`our_name`), our losses, metrics, optimizer, schedule and
the EW method, and must reproduce the reference. Settings in which our protocol deliberately differs are switched
to the reference's here (:data:`REFERENCE_SETTINGS`); each such difference is stated in the protocol file and in
``benchmark/protocol_verification.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

import datamodules.nyud as nyud
import datamodules.pascal_context as pascal
from benchmark import tasks as T
from benchmark.config import load_suite
from benchmark.methods import create
from benchmark.module import MTOModule
from benchmark.runner import create_datamodule, create_model, module_config, resolved_hparams
from benchmark.tasks import MetricOptions
from tests.fixtures_dense import write_nyud, write_pascal
from tests.reference_replay import ReplaySampler, StepRecorder, check_fixture, load_reference, recipe_, rel_diff

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("nyud", "pascal")
PROTOCOL = {"nyud": ROOT / "configs" / "protocols" / "cso_nyud.yaml",
            "pascal": ROOT / "configs" / "protocols" / "cso_pascal.yaml"}
LINEAGE = {"nyud": "mtinet_nyud", "pascal": "mtinet_pascal"}
WRITER = {"nyud": write_nyud, "pascal": write_pascal}
OURS = {"semseg": "semseg", "depth": "depth", "normals": "normal", "edge": "edge", "human_parts": "parts",
        "sal": "saliency"}
"""Reference task name -> ours."""
REFERENCE_SETTINGS = {"augment": False, "normal_loss": "l1"}
"""Where the replays leave the protocol: the recorded runs trained with the reference's evaluation transforms (its
augmentation draws from NumPy's global state, so the steps could not be fed the same draws; the augmentation is
compared sample by sample instead, :func:`test_augmentation_matches_reference_samples`), and the normals loss is the
reference's L1 (the protocol trains 1 - cos)."""
RECORDS = ("run_reference", "run_ew")
"""The recorded runs: the reference config's loss weights (the protocol's ``train.loss_weights``, the CSO main
tables' "manually tuned" setting) and all weights 1 (its appendix Table 5 setting)."""
STEP1_RTOL = 1e-5
GRAD_RTOL = 1e-3
"""Gradient and update norms of step 1: float32 sums over 4M parameters in different orders, on another CPU with
other kernels. Measured: 6e-8 on the CPU the records were made on (AVX512), 1.75e-4 (NYUD's shared gradient norm)
on an AVX2 CPU; a changed loss scale or weighting moves them by far more."""
NOISE_FACTOR = 3.0
MIN_DRIFT = 1e-3
"""The documented bound after step 1, per quantity: NOISE_FACTOR x the largest deviation of the reference from itself
when only its thread count changes (``<record>_threads2.json``: the same run with 2 torch threads), at least MIN_DRIFT.
Float32 reduction-order noise grows through Adam's first, sign-like steps (up to ~15 % on the gradient norms after
10 steps, reference against reference), so no tighter bound holds for any implementation."""


@pytest.fixture(scope="module", params=DATASETS)
def dataset(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def header(dataset) -> dict:
    return load_reference(LINEAGE[dataset], "header")


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory, dataset, header) -> Path:
    fx = header["fixture"]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in fx["kwargs"].items()}
    return check_fixture(WRITER[dataset](tmp_path_factory.mktemp(dataset), **kwargs), fx)


def ref(dataset: str, name: str) -> dict:
    return load_reference(LINEAGE[dataset], name)


@pytest.fixture(scope="module", params=RECORDS)
def record(request) -> str:
    return request.param


def protocol_suite(dataset: str, root: Path, epochs: int | None = None, record: str = "run_reference",
                   size: int | None = None):
    """The protocol file as shipped, pointed at the fixture (at its size unless ``size``, batch 2, no workers, CPU),
    with the reference-compatible settings of :data:`REFERENCE_SETTINGS`; for ``run_ew`` without its loss weights."""
    suite = load_suite(PROTOCOL[dataset])
    if record == "run_ew":
        suite.train.loss_weights = None
    size = size or ref(dataset, "header")["fixture"]["kwargs"]["h"]
    suite.dataset.params.update(root=str(root), height=size, width=size, strict_sizes=False, num_workers=0,
                                **REFERENCE_SETTINGS)
    suite.train.batch_size = ref(dataset, "header")["batch_size"]
    suite.train.epochs = epochs or suite.train.epochs
    suite.train.accelerator = "cpu"
    return suite


def our_name(ref_name: str) -> str:
    """Reference ``MultiTaskModel`` parameter / buffer name -> ``models.hrnet.HRNetMTL`` name."""
    if ref_name.startswith("backbone."):
        return "encoder." + ref_name.removeprefix("backbone.")
    _, task, layer, rest = ref_name.split(".", 3)
    assert layer == "last_layer", ref_name
    return f"heads.{OURS[task]}.{rest}"


def reference_names(dataset: str) -> list[str]:
    """The reference parameter names, in its order (``structure.json`` keeps them under our names)."""
    inverse = {v: k for k, v in OURS.items()}
    names = []
    for ours in ref(dataset, "structure")["param_shapes"]:
        if ours.startswith("encoder."):
            names.append("backbone." + ours.removeprefix("encoder."))
        else:
            _, task, rest = ours.split(".", 2)
            names.append(f"decoders.{inverse[task]}.last_layer.{rest}")
    assert [our_name(n) for n in names] == list(ref(dataset, "structure")["param_shapes"])
    return names


def reference_model(suite, dm, dataset: str):
    """Our protocol model with the reference's initial weights (the recipe keyed by reference names)."""
    model = create_model(suite, dm.tasks)
    ours = dict(model.named_parameters())
    recipe_({n: ours[our_name(n)] for n in reference_names(dataset)})
    return model


def protocol_module(suite, dm, model) -> MTOModule:
    m = next(m for m in suite.methods if m.name == "ew")
    method = create(m.name, len(dm.tasks), **resolved_hparams(suite, m))
    config = module_config(suite, log_every_n_steps=0)
    return MTOModule(model, dm.tasks, method, config)


def task_order(dm, run: dict) -> list[int]:
    """Position in the reference's task list of each of our tasks."""
    theirs = [OURS[t] for t in run["tasks"]]
    return [theirs.index(t.name) for t in dm.tasks]


def replay_loader(dm, run: dict) -> torch.utils.data.DataLoader:
    """Our (unaugmented) training set in the reference's recorded batch order."""
    ds = dm._dataset("train")
    position = {item: i for i, item in enumerate(dm.ids["train"])}
    per_epoch = run["steps_per_epoch"]
    keys = [[position[i] for s in run["steps"][e * per_epoch:(e + 1) * per_epoch] for i in s["batch"]]
            for e in range(run["epochs"])]
    return torch.utils.data.DataLoader(ds, batch_size=dm.batch_size, sampler=ReplaySampler(keys), drop_last=True)


def value_stats(t: torch.Tensor, valid: torch.Tensor) -> list[float]:
    t = t.double()
    return [float(valid.sum()), float(t[valid].sum()), float(t[valid].square().sum())]


def sample_stats(sample: dict, tasks) -> dict[str, list[float]]:
    """Count, sum and sum of squares over the valid values (the reference's != 255) of the image and each target."""
    out = {"image": value_stats(sample["image"], torch.ones_like(sample["image"], dtype=torch.bool))}
    for t in tasks:
        y = sample["targets"][t.name]
        if t.kind == "normals":
            valid = (y != 0).any(dim=0, keepdim=True).expand_as(y)
        elif t.kind == "depth":
            valid = y != 0
        else:
            valid = y != t.ignore_index
        out[t.name] = value_stats(y, valid)
    return out


def reference_stats(rec: dict) -> dict[str, list[float]]:
    return {OURS.get(k, k): [v["count"], v["sum"], v["sq"]] for k, v in rec.items() if isinstance(v, dict)}


def check_sample(ours: dict, theirs: dict, what: str) -> None:
    for key, mine in ours.items():
        np.testing.assert_allclose(mine, theirs[key], rtol=1e-5, atol=1e-3, err_msg=f"{what} {key}")


SAMPLES = ("data", "data_resized")
"""The recorded samples: at the fixture's size (the fixed resize a copy) and resized to 48 x 48 (bicubic image and
normals, nearest targets)."""


@pytest.fixture(params=SAMPLES)
def samples(request, dataset) -> dict:
    return ref(dataset, request.param)


def sample_size(samples: dict) -> int | None:
    return samples["size"][0] if "size" in samples else None


def test_eval_samples_match_reference_transforms(dataset, fixture_root, samples):
    """Every test sample after the reference's evaluation transforms (fixed resize, ignore regions: semseg 0 -> 255
    and x - 1 on NYUD, depth 0, zero normals, images without parts; ImageNet normalisation; PASCAL normals only on
    its NYU-shared classes, sal > 0.5, edges = thin(|Laplacian(LabelMap)|)) equals ours."""
    data = samples
    dm = create_datamodule(protocol_suite(dataset, fixture_root, size=sample_size(samples)))
    ds = dm.test_dataloader().dataset
    assert dm.ids["test"] == [s["id"] for s in data["eval_samples"]]
    for i, theirs in enumerate(data["eval_samples"]):
        check_sample(sample_stats(ds[i], dm.tasks), reference_stats(theirs), f"test sample {theirs['id']}")


def reference_draw(aug: dict, draws: list) -> tuple[bool, float, float]:
    """(flip, angle, scale) from the reference's recorded draws: ``RandomHorizontalFlip``'s ``random() < 0.5``, then
    ``ScaleNRotate``'s list indices (NYUD) or its uniform ``(hi - lo) u - (hi - lo) / 2 (+ 1)`` (PASCAL)."""
    (_, flip_u), (_, rot), (_, sc) = draws
    spec = aug["scale_n_rotate"]
    if spec["kind"] == "list":
        return flip_u < 0.5, float(spec["rots"][rot]), float(spec["scales"][sc])
    (r0, r1), (s0, s1) = spec["rots"], spec["scales"]
    return flip_u < 0.5, (r1 - r0) * rot - (r1 - r0) / 2, (s1 - s0) * sc - (s1 - s0) / 2 + 1


def test_augmentation_matches_reference_samples(dataset, fixture_root, samples, monkeypatch):
    """The reference's training transforms (flip p = 0.5, then ScaleNRotate: NYUD scale from {1, 1.2, 1.5}, no
    rotation; PASCAL rotation U(-20, 20), scale U(0.75, 1.25); the fixed resize, ignore regions, normalisation)
    are the protocol's: every recorded training sample (12 draws, every scale) equals ours for the same draw."""
    data = samples
    aug = data["augmentation"]
    assert aug["flip_probability"] == 0.5
    assert aug["order"][:2] == ["RandomHorizontalFlip", "ScaleNRotate"]
    if dataset == "nyud":
        assert aug["scale_n_rotate"] == {"rots": [0], "scales": list(nyud.SCALES), "kind": "list"}
    else:
        assert aug["scale_n_rotate"] == {"rots": [-pascal.ROTATION_DEG, pascal.ROTATION_DEG],
                                         "scales": list(pascal.SCALE_RANGE), "kind": "tuple"}
    suite = protocol_suite(dataset, fixture_root, size=sample_size(samples))
    suite.dataset.params["augment"] = True
    dm = create_datamodule(suite)
    draws: list[tuple[bool, float, float]] = []
    monkeypatch.setattr(type(dm), "_draw", lambda self, rng: draws[-1])
    ds = dm._dataset("train")
    position = {item: i for i, item in enumerate(dm.ids["train"])}
    for theirs in data["train_augmented"]:
        draws.append(reference_draw(aug, theirs["draws"]))
        check_sample(sample_stats(ds[(0, position[theirs["id"]])], dm.tasks), reference_stats(theirs),
                     f"train sample {theirs['id']} (flip, angle, scale) = {draws[-1]}")
    assert len({d[0] for d in draws}) == 2 and len({d[2] for d in draws}) >= 3


def test_parameter_map_and_counts_are_exact(dataset, fixture_root):
    """Our protocol model's parameters are the reference's, name by name (shapes; the backbone's in order), with the
    exact count of the shared backbone and of every head; its buffers too."""
    structure = ref(dataset, "structure")
    suite = protocol_suite(dataset, fixture_root)
    model = create_model(suite, create_datamodule(suite).tasks)
    assert {n: list(p.shape) for n, p in model.named_parameters()} == structure["param_shapes"]
    encoder = [n for n in structure["param_shapes"] if n.startswith("encoder.")]
    assert [n for n, _ in model.named_parameters() if n.startswith("encoder.")] == encoder
    counts = structure["param_count"]
    assert sum(p.numel() for p in model.encoder.parameters()) == counts["backbone"] == 3_860_720
    for task, n in counts.items():
        if task != "backbone":
            assert sum(p.numel() for p in model.heads[OURS[task]].parameters()) == n, task
    assert sorted(n for n, _ in model.named_buffers()) == structure["buffer_names"]


def test_batchnorm_settings_match_reference(dataset, fixture_root):
    """BN momentum of the backbone (the reference's BN_MOMENTUM 0.01) and of the heads (0.1), eps and count."""
    bn = ref(dataset, "structure")["batchnorm"]
    suite = protocol_suite(dataset, fixture_root)
    model = create_model(suite, create_datamodule(suite).tasks)
    groups = {"backbone": model.encoder, "heads": model.heads}
    for group, module in groups.items():
        assert sorted({m.momentum for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)}) == bn[group]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert (len(bns), sorted({m.eps for m in bns})) == (bn["count"], bn["eps"])


def test_lr_schedule_matches_reference_poly(dataset, fixture_root):
    """Our per-batch poly factor over the protocol's 100 epochs gives, at every epoch, the learning rate of the
    reference's ``adjust_learning_rate`` (lr (1 - epoch / epochs)^0.9, set once per epoch)."""
    lrs = ref(dataset, "data")["lr_per_epoch_100"]
    suite = protocol_suite(dataset, fixture_root)
    suite.train.epochs = 100
    dm = create_datamodule(suite)
    module = protocol_module(suite, dm, create_model(suite, dm.tasks))
    per_epoch = 7
    module._trainer = SimpleNamespace(estimated_stepping_batches=per_epoch * 100, max_epochs=100)
    factor = module.configure_optimizers()["lr_scheduler"].lr_lambdas[0]
    for epoch, theirs in enumerate(lrs):
        for batch in (0, per_epoch - 1):
            assert suite.train.lr * factor(epoch * per_epoch + batch) == pytest.approx(theirs, rel=1e-12)


def fixed_predictions(b: int, shape, channels: dict[str, int]) -> dict[str, torch.Tensor]:
    """The predictions ``metrics.json`` was recorded with (the driver's ``fixed_predictions``)."""
    g = torch.Generator().manual_seed(2000 + b)
    n, _, h, w = shape
    return {t: torch.randn(n, c, h, w, generator=g) * (2.0 if t == "depth" else 1.0) + (2.5 if t == "depth" else 0.0)
            for t, c in channels.items()}


REFERENCE_METRIC = {
    "semseg": ("online", "semseg", "mIoU", "miou", 100),
    "parts": ("online", "human_parts", "mIoU", "miou", 100),
    "depth": ("online", "depth", "rmse", "rmse", 1),
    "normal": ("online", "normals", "mean", "normal_mean", 1),
    "saliency": ("offline", "sal", "maxF", "maxf", 100),
    "saliency_miou": ("offline", "sal", "mIoU", "miou", 100),
}
"""Our metric -> (reference evaluation, task, key, our key, our scale). Online: the meters ``eval_model`` updates per
batch; offline: ``eval_*_predictions`` on the saved PNGs (saliency is read from an 8-bit PNG, as ours models)."""


def test_losses_and_metrics_match_reference_functions(dataset, fixture_root):
    """The reference's criterion and evaluation on fixed predictions over the test split: every task loss per batch
    (CE with ignore 255, masked L1 depth, L1 of normalised normals over valid components, HED-balanced BCE for
    saliency, BCE with w = 0.95 for edges) and semseg / parts mIoU (one TP/FP/FN count over the split, every class
    in the mean), depth RMSE (over all valid pixels), normal mean angle (over all valid pixels), saliency maxF and
    mIoU (15 thresholds, per-image precision / recall averaged, then F; the whole F and mean-Jaccard curves)."""
    metrics = ref(dataset, "metrics")
    suite = protocol_suite(dataset, fixture_root)
    dm = create_datamodule(suite)
    options = module_config(suite).metric_options
    specs = {t.name: t for t in dm.tasks}
    ours_metric = {t.name: T.make_metric(t, options) for t in dm.tasks}
    channels = metrics["channels"]
    order = [OURS[t] for t in channels]
    for b, (batch, theirs) in enumerate(zip(dm.test_dataloader(), metrics["batches"], strict=True)):
        preds = {OURS[t]: p for t, p in fixed_predictions(b, batch["image"].shape, channels).items()}
        losses = [float(T.task_loss(specs[t], preds[t], batch["targets"][t])) for t in order]
        np.testing.assert_allclose(losses, theirs["losses"], rtol=STEP1_RTOL, err_msg=f"batch {b} losses")
        for t, metric in ours_metric.items():
            metric.update(preds[t], batch["targets"][t])
    check_metrics({t: m.compute() for t, m in ours_metric.items()}, metrics, rtol=1e-5)
    if "saliency" in ours_metric:
        m = ours_metric["saliency"]
        p, r = m.precision_sum / m.images, m.recall_sum / m.images
        theirs = metrics["offline"]["sal"]
        np.testing.assert_allclose((2 * p * r / (p + r + 1e-12)).tolist(), theirs["F"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose((m.jaccard_sum / m.images).tolist(), theirs["mIoUs"], rtol=1e-6, atol=1e-9)


def check_metrics(ours: dict, theirs: dict, rtol: float, only: str | None = None) -> None:
    for name, (source, task, key, our_key, scale) in REFERENCE_METRIC.items():
        task_ours = name.removesuffix("_miou")
        if task_ours not in ours or only not in (None, name):
            continue
        value = float(ours[task_ours][our_key]) / scale
        assert value == pytest.approx(theirs[source][task][key], rel=rtol, abs=1e-7), (name, source)


def test_loss_weights_are_the_reference_configs(dataset, fixture_root):
    """The protocol's ``train.loss_weights`` are the reference config's (recorded with its run), task by task."""
    theirs = {OURS[t]: w for t, w in ref(dataset, "run_reference")["weights"].items()}
    assert load_suite(PROTOCOL[dataset]).train.loss_weights == theirs
    assert set(ref(dataset, "run_ew")["weights"].values()) == {1.0}


def test_step1_losses_and_gradients_match(dataset, fixture_root, record):
    """One EW training step of our protocol path on the reference's first batch: every task loss to 1e-5, the
    shared and head gradient norms and the parameter-update norm to ``GRAD_RTOL``, the learning rate exactly."""
    run = ref(dataset, record)
    recorder, _, _ = run_replay(dataset, fixture_root, run, epochs=1, limit_batches=1, record=record)
    compare_steps(run, recorder.steps, recorder.order)


def run_replay(dataset: str, fixture_root: Path, run: dict, epochs: int, limit_batches: int | None = None,
               record: str = "run_reference"):
    suite = protocol_suite(dataset, fixture_root, epochs, record)
    dm = create_datamodule(suite)
    torch.manual_seed(0)
    module = protocol_module(suite, dm, reference_model(suite, dm, dataset))
    recorder = StepRecorder([t.name for t in dm.tasks])
    recorder.order = task_order(dm, run)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[recorder],
                        **({"limit_train_batches": limit_batches} if limit_batches else {}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer.fit(module, train_dataloaders=replay_loader(dm, run))
    finally:
        torch.set_num_threads(threads)
    return recorder, module, dm


STEP_KEYS = ("grad_norm_shared", "grad_norm_heads", "update_norm", "lr")


def step_pairs(mine: dict, theirs: dict, order: list[int]) -> list[tuple[str, float, float]]:
    pairs = [(f"loss_{k}", a, theirs["losses"][k]) for a, k in zip(mine["losses"], order, strict=True)]
    pairs += [("weight", w, 1.0) for w in mine.get("weights", [])]
    return pairs + [(k, mine[k], theirs[k]) for k in STEP_KEYS]


def drift_bounds(dataset: str, record: str) -> dict[str, float]:
    """Per quantity: NOISE_FACTOR x the reference's largest deviation from itself over the steps after the first."""
    run, other = ref(dataset, record), ref(dataset, f"{record}_threads2")
    order = list(range(len(run["tasks"])))
    worst: dict[str, float] = {}
    for a, b in zip(other["steps"][1:], run["steps"][1:], strict=True):
        for key, x, y in step_pairs(a, b, order):
            worst[key] = max(worst.get(key, 0.0), rel_diff(x, y))
    return {k: max(MIN_DRIFT, NOISE_FACTOR * v) for k, v in worst.items()}


def compare_steps(run: dict, ours: list[dict], order: list[int], bounds: dict | None = None) -> dict[str, float]:
    """Max relative difference per quantity over the steps; step 1 to float32 precision, then ``bounds``."""
    worst: dict[str, float] = {}
    assert ours
    for i, (mine, theirs) in enumerate(zip(ours, run["steps"], strict=False)):
        for key, a, b in step_pairs(mine, theirs, order):
            d = rel_diff(a, b)
            worst[key] = max(worst.get(key, 0.0), d)
            if i == 0:
                tol = STEP1_RTOL if key.startswith("loss") or key in ("weight", "lr") else GRAD_RTOL
            else:
                tol = MIN_DRIFT if key in ("weight", "lr") else bounds[key]
            assert d <= tol, f"step {i + 1} {key}: ours {a} vs reference {b} (rel {d:.2e} > {tol:.2e})"
    return worst


def final_metrics(module: MTOModule, dm, options: MetricOptions) -> dict:
    model = module.model.eval()
    metrics = {t.name: T.make_metric(t, options) for t in dm.tasks}
    with torch.no_grad():
        for batch in dm.test_dataloader():
            z = model.encode(batch["image"])
            for t in dm.tasks:
                metrics[t.name].update(model.head(t.name, z), batch["targets"][t.name])
    return {t: m.compute() for t, m in metrics.items()}


ARGMAX_METRICS = ("semseg", "parts")
"""Not compared after the replay: the argmax of a 20-step model is at chance (mIoU ~0.1 %) and flips with the
drift above (NYUD: ours 0.21 % vs 0.06 %); their accumulation is verified on fixed predictions instead."""


@pytest.mark.slow
def test_replay_matches_reference(dataset, fixture_root, record):
    """Each recorded run (10 epochs of 2 steps, poly over 10 epochs): per step every task loss, the EW weights,
    the gradient and update norms and the learning rate; at the end the reference's evaluation of the trained
    model in eval mode (BN running statistics; depth RMSE, normal mean angle, saliency maxF / mIoU, not the
    :data:`ARGMAX_METRICS`), the per-parameter norms (as one distance) and the BN statistics; step 1 to float32
    precision, the rest within the reference's own thread-count noise (:data:`NOISE_FACTOR`)."""
    run, other = ref(dataset, record), ref(dataset, f"{record}_threads2")
    recorder, module, dm = run_replay(dataset, fixture_root, run, epochs=run["epochs"], record=record)
    assert len(recorder.steps) == len(run["steps"]) >= 20
    worst = compare_steps(run, recorder.steps, recorder.order, drift_bounds(dataset, record))
    print(f"{dataset} {record}: max rel. diff per quantity over {len(run['steps'])} steps: {worst}")
    suite = protocol_suite(dataset, fixture_root, record=record)
    ours = final_metrics(module, dm, module_config(suite).metric_options)
    for name, (source, task, key, _, _) in REFERENCE_METRIC.items():
        if name.removesuffix("_miou") in ours and name not in ARGMAX_METRICS:
            noise = rel_diff(other["final"][source][task][key], run["final"][source][task][key])
            check_metrics({name.removesuffix("_miou"): ours[name.removesuffix("_miou")]}, run["final"],
                          max(MIN_DRIFT, NOISE_FACTOR * noise), only=name)
    bns = [m for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for key, attr in (("running_mean_norm", "running_mean"), ("running_var_norm", "running_var")):
        norm = math.sqrt(sum(float(getattr(m, attr).double().square().sum()) for m in bns))
        noise = rel_diff(other["final"][key], run["final"][key])
        assert rel_diff(norm, run["final"][key]) <= max(MIN_DRIFT, NOISE_FACTOR * noise), key
    assert int(bns[0].num_batches_tracked) == run["final"]["num_batches_tracked"]
    params = dict(module.model.named_parameters())
    ours_norms = {n: float(q.detach().double().norm()) for n, q in params.items()}
    noise = norm_distance(other["final"]["param_norms"], run["final"]["param_norms"])
    assert set(ours_norms) == set(run["final"]["param_norms"])
    assert norm_distance(ours_norms, run["final"]["param_norms"]) <= max(MIN_DRIFT, NOISE_FACTOR * noise)


def norm_distance(a: dict[str, float], b: dict[str, float]) -> float:
    """|| (|p_a| - |p_b|) over parameters || / || |p_b| ||: how far two runs' per-parameter norms are apart."""
    return math.sqrt(sum((a[n] - v) ** 2 for n, v in b.items())) / math.sqrt(sum(v * v for v in b.values()))
