"""Multi-task network architectures: each exposes ``encode``, ``head``, ``shared_parameters``, ``task_parameters``."""

from models.deeplab import DeepLabResNet
from models.famo_cnn import FAMOCelebANet
from models.hrnet import HRNetMTL
from models.lenet import MultiLeNet
from models.resnet_cls import ResNetCls
from models.segnet import SegNetMTL
from models.segnet_mtan import SegNetMTAN, SegNetSplit

MODELS = {
    "segnet": SegNetMTL,
    "segnet_split": SegNetSplit,
    "segnet_mtan": SegNetMTAN,
    "deeplab_resnet50": DeepLabResNet,
    "hrnet18": HRNetMTL,
    "lenet": MultiLeNet,
    "resnet18_cls": ResNetCls,
    "famo_cnn": FAMOCelebANet,
}

__all__ = ["MODELS", "DeepLabResNet", "FAMOCelebANet", "HRNetMTL", "MultiLeNet", "ResNetCls", "SegNetMTAN",
           "SegNetMTL", "SegNetSplit"]
