"""Datamodules: data plus the tasks it declares as ``TaskSpec``s."""

from datamodules.celeba import CelebADataModule
from datamodules.multi_mnist import MultiMNISTDataModule
from datamodules.synthetic_scenes import SyntheticScenesDataModule
from datamodules.task_spec import TASK_KINDS, TaskSpec

DATAMODULES = {"synthetic_scenes": SyntheticScenesDataModule}
DATAMODULES["multi_mnist"] = MultiMNISTDataModule
DATAMODULES["celeba"] = CelebADataModule

__all__ = ["DATAMODULES", "TASK_KINDS", "SyntheticScenesDataModule", "TaskSpec"]
