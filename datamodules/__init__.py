"""Datamodules: data plus the tasks it declares as ``TaskSpec``s."""

from datamodules.celeba import CelebADataModule
from datamodules.cityscapes import CityscapesDataModule
from datamodules.multi_mnist import MultiMNISTDataModule
from datamodules.nyud import NYUDDataModule
from datamodules.nyuv2 import NYUv2DataModule
from datamodules.pascal_context import PascalContextDataModule
from datamodules.synthetic_scenes import SyntheticScenesDataModule
from datamodules.task_spec import TaskSpec

DATAMODULES = {
    "synthetic_scenes": SyntheticScenesDataModule,
    "nyuv2": NYUv2DataModule,
    "cityscapes": CityscapesDataModule,
    "nyud": NYUDDataModule,
    "pascal_context": PascalContextDataModule,
    "multi_mnist": MultiMNISTDataModule,
    "celeba": CelebADataModule,
}

__all__ = ["DATAMODULES", "CelebADataModule", "CityscapesDataModule", "MultiMNISTDataModule",
           "NYUDDataModule", "NYUv2DataModule", "PascalContextDataModule", "SyntheticScenesDataModule", "TaskSpec"]
