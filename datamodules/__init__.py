"""Datamodules: data plus the tasks it declares as ``TaskSpec``s."""

from datamodules.cityscapes import CityscapesDataModule
from datamodules.nyud import NYUDDataModule
from datamodules.nyuv2 import NYUv2DataModule
from datamodules.synthetic_scenes import SyntheticScenesDataModule
from datamodules.task_spec import TASK_KINDS, TaskSpec

DATAMODULES = {
    "synthetic_scenes": SyntheticScenesDataModule,
    "nyuv2": NYUv2DataModule,
    "cityscapes": CityscapesDataModule,
    "nyud": NYUDDataModule,
}

__all__ = ["DATAMODULES", "TASK_KINDS", "CityscapesDataModule", "NYUDDataModule", "NYUv2DataModule",
           "SyntheticScenesDataModule", "TaskSpec"]
