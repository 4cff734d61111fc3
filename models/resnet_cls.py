"""ResNet-18 shared encoder (timm, built from scratch) with one linear head per task, for CelebA-style attributes.

MGDA-UB's CelebA network (Sener & Koltun, NeurIPS 2018, §5.2; docs/protocols.md P6) is a ResNet-18 whose stem suits
64x64 inputs: a 3x3 stride-1 convolution and no max pooling (``cifar_stem=True``, the default here). The shared
representation ``z`` is the globally average-pooled 512-d feature, or with ``pool=k`` MGDA-UB's
``avg_pool2d(k)`` of the last feature map, flattened (``multi_faces_resnet.py``: k = 4, 2048-d at 64x64); each head
is ``Linear(width, C)``. No weights are downloaded; ``checkpoint`` loads a local state dict into the encoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.multitask import EncoderWithHeads


def load_encoder_checkpoint(encoder: nn.Module, path: str | Path) -> None:
    """Load a timm/torchvision-style ResNet-18 state dict (optionally under ``"state_dict"``) into ``encoder``.

    The classifier (``fc.*``) is dropped; any other missing, unexpected or mis-shaped key is an error naming the
    file and the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resnet18_cls: checkpoint {path} (model.params.checkpoint) does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for unreadable files
        raise ValueError(f"resnet18_cls: checkpoint {path} is not a readable torch state dict: {exc}") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"resnet18_cls: checkpoint {path} does not hold a mapping of parameter names to tensors")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
              for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"resnet18_cls: checkpoint {path} does not fit the encoder: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatches {shapes[:3]} (cifar_stem=True needs a "
                         "3x3 conv1; an ImageNet checkpoint fits cifar_stem=False)")
    encoder.load_state_dict(state)


class ResNetCls(EncoderWithHeads):
    """timm ResNet-18 trunk shared by all tasks (``encode`` -> 512-d, or with ``pool`` the flattened
    ``avg_pool2d(pool)`` map of an ``input_size`` image), one ``Linear`` head per task."""

    def __init__(self, head_channels: Mapping[str, int], in_channels: int = 3, cifar_stem: bool = True,
                 checkpoint: str | None = None, pool: int | None = None, input_size: int = 64):
        super().__init__(head_channels)
        stride = 8 if cifar_stem else 32
        if pool is not None and (pool < 1 or input_size % (stride * pool)):
            raise ValueError(f"resnet18_cls: pool={pool} must be >= 1 and divide the {input_size // stride} x "
                             f"{input_size // stride} feature map of input_size={input_size}")
        self.pool = pool
        self.encoder = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=in_channels)
        if cifar_stem:
            self.encoder.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.encoder.maxpool = nn.Identity()
        if checkpoint is not None:
            load_encoder_checkpoint(self.encoder, checkpoint)
        width = self.encoder.num_features
        if pool is not None:
            side = input_size // stride // pool
            width *= side * side
        self.heads = nn.ModuleDict({name: nn.Linear(width, c) for name, c in head_channels.items()})

    def _encode(self, x: Tensor, task: str | None = None) -> Tensor:
        if self.pool is None:
            return self.encoder(x)
        z = F.avg_pool2d(self.encoder.forward_features(x), self.pool).flatten(1)
        width = next(iter(self.heads.values())).in_features
        if z.shape[1] != width:
            raise ValueError(f"resnet18_cls: a {tuple(x.shape[-2:])} image pools to {z.shape[1]} features, the heads "
                             f"take {width} (model.params.input_size must be the image size)")
        return z
