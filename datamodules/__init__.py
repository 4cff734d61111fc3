"""Datamodules: data plus the tasks it declares as ``TaskSpec``s."""

from datamodules.nyud import NYUDDataModule
from datamodules.synthetic_scenes import SyntheticScenesDataModule
from datamodules.task_spec import TASK_KINDS, TaskSpec

DATAMODULES = {"synthetic_scenes": SyntheticScenesDataModule, "nyud": NYUDDataModule}

__all__ = ["DATAMODULES", "NYUDDataModule", "TASK_KINDS", "SyntheticScenesDataModule", "TaskSpec"]
