"""Multi-task network architectures: each exposes ``encode``, ``head``, ``shared_parameters``, ``task_parameters``."""

from models.segnet import SegNetMTL

MODELS = {"segnet": SegNetMTL}

__all__ = ["MODELS", "SegNetMTL"]
