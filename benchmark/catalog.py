"""What exists, readable without importing torch: the names (and one-line summaries) of the built-in methods,
datasets and models, the suites under ``configs/suites`` and the paper tables of ``configs/tables.yaml``.

The command line checks every name against these lists before it imports torch or Lightning, so a typo is
reported at once. ``tests/test_catalog.py`` checks each list against the real registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITES_DIR = REPO_ROOT / "configs" / "suites"
TABLES_FILE = REPO_ROOT / "configs" / "tables.yaml"
METHOD_ENTRY_POINTS = "mtobench.methods"

METHODS: dict[str, str] = {
    "aligned_mtl": "Aligned-MTL (Senushkin et al., CVPR 2023): condition-number aligned gradient update",
    "cagrad": "CAGrad (Liu et al., NeurIPS 2021): conflict-averse step near the average gradient",
    "cso": "CSO (Jeong & Yoon, CVPR 2024): connection-strength task priority, two phases",
    "db_mtl": "DB-MTL (Lin et al., 2023): log-loss balancing plus gradient-magnitude balancing",
    "dwa": "DWA (Liu et al., CVPR 2019): loss weights from the rate of loss descent",
    "ew": "Equal weighting: the sum of the task losses",
    "fairgrad": "FairGrad (Ban & Ji, ICML 2024): alpha-fair resource allocation of the update",
    "famo": "FAMO (Liu et al., NeurIPS 2023): fast adaptive weights balancing log-loss decrease",
    "fixed": "Fixed loss weights given as a hyper-parameter",
    "graddrop": "GradDrop (Chen et al., NeurIPS 2020): sign-consistency gradient dropout",
    "gradnorm": "GradNorm (Chen et al., ICML 2018): weights that equalise gradient-norm training rates",
    "gradvac": "GradVac (Wang et al., ICLR 2021): gradient vaccine towards target cosine similarities",
    "imtl_g": "IMTL-G (Liu et al., ICLR 2021): equal projections of the update on every task gradient",
    "imtl_h": "IMTL-H (Liu et al., ICLR 2021): IMTL-G gradient balance plus IMTL-L loss scales",
    "imtl_l": "IMTL-L (Liu et al., ICLR 2021): learnt loss scales (scale-invariant losses)",
    "mgda": "MGDA (Sener & Koltun, NeurIPS 2018): min-norm point of the task gradients",
    "mgda_ub": "MGDA-UB (Sener & Koltun, NeurIPS 2018): MGDA on representation gradients",
    "nash_mtl": "Nash-MTL (Navon et al., ICML 2022): Nash bargaining solution of the task gradients",
    "pcgrad": "PCGrad (Yu et al., NeurIPS 2020): project away conflicting gradient components",
    "rlw": "RLW (Lin et al., TMLR 2022): random loss weights drawn each step",
    "si": "Scale-invariant linear scalarization: the sum of log losses",
    "upgrad": "UPGrad (Quinton & Rey, 2024): Jacobian descent, projections onto the dual cone",
    "uw": "Uncertainty weighting (Kendall et al., CVPR 2018): learnt homoscedastic log-variances",
}

MODELS: dict[str, str] = {
    "segnet": "SegNet trunk shared by all tasks, light per-task heads (dense tasks)",
    "segnet_split": "SegNet split (MTAN paper): shared SegNet, per-task conv heads (dense tasks)",
    "segnet_mtan": "SegNet-MTAN (Liu et al., CVPR 2019): task attention modules (dense tasks)",
    "deeplab_resnet50": "DeepLab dilated ResNet-50 encoder, ASPP head per task (dense tasks)",
    "hrnet18": "HRNet-18 encoder, four scales fused, one HRNet head per task (dense tasks)",
    "lenet": "MultiLeNet (Sener & Koltun 2018): shared LeNet, per-task MLP heads (MultiMNIST)",
    "resnet18_cls": "ResNet-18 trunk, one linear head per task (classification)",
    "famo_cnn": "The 9-layer CNN of the FAMO CelebA experiments (classification)",
}


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's summary, its tasks (non-auxiliary, in model order) and what a run without a suite file uses."""

    summary: str
    tasks: tuple[str, ...]
    model: str
    model_params: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    task_count: int = 0
    """Where ``tasks`` is empty: how many tasks the data declares."""


DATASETS: dict[str, DatasetInfo] = {
    "synthetic_scenes": DatasetInfo(
        "Procedural indoor scenes, generated locally: semseg, depth, normal (no download)",
        ("semseg", "depth", "normal"), "segnet", {"width": 12, "levels": 3},
        {"height": 32, "width": 48, "n_train": 512, "n_val": 96, "n_test": 128, "seed": 0},
        {"epochs": 4, "batch_size": 16, "lr": 0.002, "lr_schedule": "cosine"}),
    "nyuv2": DatasetInfo("MTAN NYUv2 (795 train / 654 test): semseg, depth, normal", ("semseg", "depth", "normal"),
                         "segnet_mtan", train={"epochs": 200, "batch_size": 2, "lr": 1e-4}),
    "cityscapes": DatasetInfo("MTAN Cityscapes (2975 train / 500 test, 128x256): semseg, depth", ("semseg", "depth"),
                              "segnet_mtan", train={"epochs": 200, "batch_size": 8, "lr": 1e-4}),
    "nyud": DatasetInfo("NYUD-v2 (795 / 654): semseg, depth, normal, edge (auxiliary)", ("semseg", "depth", "normal"),
                        "hrnet18", train={"epochs": 100, "batch_size": 8, "lr": 1e-4}),
    "pascal_context": DatasetInfo("PASCAL-Context (4998 / 5105): semseg, parts, saliency, normal, edge (auxiliary)",
                                  ("semseg", "parts", "saliency", "normal"), "hrnet18",
                                  train={"epochs": 100, "batch_size": 8, "lr": 1e-4}),
    "multi_mnist": DatasetInfo("MultiMNIST / MultiFashion overlays (1x28x28): left, right", ("left", "right"), "lenet",
                               train={"epochs": 10, "batch_size": 256, "lr": 1e-3}),
    "celeba": DatasetInfo("CelebA: 40 face attributes as 40 binary tasks (official partition)", (), "resnet18_cls",
                          train={"epochs": 10, "batch_size": 256, "lr": 1e-3}, task_count=40),
}
"""``celeba`` lists no task names here: its 40 are read from the annotation file when the data is loaded."""


def plugin_methods() -> dict[str, str]:
    """Method names declared in the ``mtobench.methods`` entry-point group (metadata only: nothing is imported)."""
    return {ep.name: f"plugin {ep.value} (package {ep.dist.name if ep.dist else '?'})"
            for ep in entry_points(group=METHOD_ENTRY_POINTS)}


def method_names() -> dict[str, str]:
    """Built-in and plugin method names with their summaries."""
    return {**plugin_methods(), **METHODS}


def _first_comment(path: Path) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    return text.split(". ")[0].rstrip(".") if text else ""


def suites(folder: Path = SUITES_DIR) -> dict[str, str]:
    """``configs/suites/<name>.yaml`` by name, with the first sentence of the file's leading comment."""
    return {p.stem: _first_comment(p) for p in sorted(folder.glob("*.yaml"))}


def tables(path: Path = TABLES_FILE) -> dict[str, str]:
    """The ``mtobench table`` names of ``configs/tables.yaml``, each with its suite and published reference."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {name: f"{spec.get('suite')} vs published {spec.get('reference')}"
            for name, spec in (data.get("tables") or {}).items()}


def dataset_tasks(name: str, params: dict[str, Any]) -> tuple[str, ...] | None:
    """The non-auxiliary tasks a dataset with ``params`` declares (its ``tasks`` param selects some); None where
    they are read from the data (CelebA)."""
    info = DATASETS[name]
    if not info.tasks:
        return None
    chosen = params.get("tasks")
    return info.tasks if chosen is None else tuple(t for t in info.tasks if t in chosen)


def _unknown(kind: str, name: str, known: dict[str, str], where: str) -> Exception:
    from benchmark.config import UsageError
    from benchmark.names import unknown_name

    return UsageError(f"{where}: {unknown_name(kind, name, known).args[0]}")


def check_names(suite, origins: dict[str, str] | None = None) -> None:
    """The suite's dataset, model and method names exist (built-ins and plugin entry points, nothing imported).
    ``origins`` maps ``dataset``/``model``/``methods`` to the flag that set it; otherwise the suite is blamed."""
    origins = origins or {}
    source = origins.get("suite", f"suite {suite.name!r}")
    if suite.dataset.name not in DATASETS:
        raise _unknown("dataset", suite.dataset.name, DATASETS, origins.get("dataset", f"{source}: dataset.name"))
    if suite.model.name not in MODELS:
        raise _unknown("model", suite.model.name, MODELS, origins.get("model", f"{source}: model.name"))
    methods = method_names()
    for i, m in enumerate(suite.methods):
        if m.name not in methods:
            raise _unknown("method", m.name, methods, origins.get("methods", f"{source}: methods[{i}].name"))
