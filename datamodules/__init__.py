"""Datamodules: data plus the tasks it declares as ``TaskSpec``s."""

from datamodules.nyud import NYUDDataModule
from datamodules.pascal_context import PascalContextDataModule
from datamodules.synthetic_scenes import SyntheticScenesDataModule
from datamodules.task_spec import TASK_KINDS, TaskSpec

DATAMODULES = {"synthetic_scenes": SyntheticScenesDataModule, "nyud": NYUDDataModule,
               "pascal_context": PascalContextDataModule}

__all__ = [
    "DATAMODULES",
    "NYUDDataModule",
    "PascalContextDataModule",
    "SyntheticScenesDataModule",
    "TASK_KINDS",
    "TaskSpec",
]
