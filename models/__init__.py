"""Multi-task network architectures: each exposes ``encode``, ``head``, ``shared_parameters``, ``task_parameters``."""

from models.deeplab import DeepLabResNet
from models.hrnet import HRNetMTL
from models.segnet import SegNetMTL
from models.segnet_mtan import SegNetMTAN, SegNetSplit

MODELS = {
    "segnet": SegNetMTL,
    "segnet_split": SegNetSplit,
    "segnet_mtan": SegNetMTAN,
    "deeplab_resnet50": DeepLabResNet,
    "hrnet18": HRNetMTL,
}

__all__ = ["MODELS", "DeepLabResNet", "HRNetMTL", "SegNetMTAN", "SegNetMTL", "SegNetSplit"]
