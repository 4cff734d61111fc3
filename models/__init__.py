"""Multi-task network architectures: each exposes ``encode``, ``head``, ``shared_parameters``, ``task_parameters``."""

from models.lenet import MultiLeNet
from models.segnet import SegNetMTL

MODELS = {"segnet": SegNetMTL}
MODELS["lenet"] = MultiLeNet

__all__ = ["MODELS", "SegNetMTL"]
