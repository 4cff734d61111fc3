"""Multi-task network architectures: each exposes ``encode``, ``head``, ``shared_parameters``, ``task_parameters``."""

from models.famo_cnn import FAMOCelebANet
from models.lenet import MultiLeNet
from models.resnet_cls import ResNetCls
from models.segnet import SegNetMTL

MODELS = {"segnet": SegNetMTL}
MODELS["lenet"] = MultiLeNet
MODELS["resnet18_cls"] = ResNetCls
MODELS["famo_cnn"] = FAMOCelebANet

__all__ = ["MODELS", "SegNetMTL"]
