"""Datamodules: data plus the tasks it declares as ``TaskSpec``s."""

from datamodules.synthetic_scenes import SyntheticScenesDataModule
from datamodules.task_spec import TASK_KINDS, TaskSpec

DATAMODULES = {"synthetic_scenes": SyntheticScenesDataModule}

__all__ = ["DATAMODULES", "TASK_KINDS", "SyntheticScenesDataModule", "TaskSpec"]
