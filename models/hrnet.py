"""HRNet-18 with multi-scale per-task heads: the MTI-Net / Vandenhende NYUD and PASCAL-Context setting (P3, P5).

The encoder is timm's ``hrnet_w18_small_v2`` (Wang et al., "Deep High-Resolution Representation Learning", TPAMI
2020): the "HRNet-18" of Vandenhende et al.'s code, whose ``hrnet_w18.yml`` is this small-v2 configuration and which
loads ``hrnet_w18_small_model_v2.pth``. Its four branches (18/36/72/144 channels at 1/4..1/32) are upsampled
bilinearly to 1/4 and concatenated: ``z`` is ``B x 270 x H/4 x W/4``. Each task head is the HRNet segmentation head
(1x1 conv-BN-ReLU over the 270 channels, 1x1 conv), upsampled bilinearly to the input size.

Two encoder settings follow Vandenhende's ``models/seg_hrnet.py`` when asked (the CSO protocols do): ``fuse_upsample=
"bilinear"`` upsamples inside the exchange units bilinearly (timm: nearest) and ``encoder_bn_momentum=0.01`` is its
``BN_MOMENTUM`` (timm: 0.1); the heads keep BN momentum 0.1 in both (docs/protocols.md P3, P5).

**Simplified from MTI-Net** (Vandenhende, Georgoulis & Van Gool, ECCV 2020): these are the heads of its multi-task
baseline ("HRNet-18 MTL", §4), without MTI-Net's per-scale initial predictions, multi-modal distillation and feature
propagation. Those mix the tasks inside the decoder, which has no place in the ``encode`` / independent ``head``
interface; results are therefore comparable with the MTL-baseline rows, not with MTI-Net's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.backbones import convert_to_task_bn, create_backbone, load_checkpoint
from models.multitask import MultiTaskModel, check_divisible

CLASSIFIER_KEYS = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
STRIDE = 4
FUSE_UPSAMPLE = ("nearest", "bilinear")


def hrnet_head(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, out_channels, 1))


class HRNetMTL(MultiTaskModel):
    """Shared HRNet encoder, four scales concatenated at 1/4 (``z``), one HRNet head per task.

    * ``variant``: the timm HRNet (default ``hrnet_w18_small_v2``; ``hrnet_w18`` is the full-size W18).
    * ``pretrained_path``: a local ImageNet checkpoint of that variant (official HRNet-Image-Classification or timm
      keys); its classification parts (``incre_modules``, ``downsamp_modules``, ``final_layer``, ``classifier``) are
      dropped, every other key must fit. Never downloaded.
    * ``task_bn``: every BN of the encoder becomes one BN per task, each a copy of the (pretrained) BN (CSO §4.2).
    * ``fuse_upsample``: ``"nearest"`` (timm) or ``"bilinear"`` (Vandenhende's seg-HRNet) in the exchange units.
    * ``encoder_bn_momentum``: the momentum of every encoder BN; None keeps timm's 0.1.
    """

    def __init__(self, head_channels: Mapping[str, int], variant: str = "hrnet_w18_small_v2",
                 pretrained_path: str | Path | None = None, task_bn: bool = False, in_channels: int = 3,
                 head_bias: Mapping[str, float] | None = None, fuse_upsample: str = "nearest",
                 encoder_bn_momentum: float | None = None) -> None:
        super().__init__(head_channels, task_bn)
        if not variant.startswith("hrnet"):
            raise ValueError(f"HRNetMTL: variant={variant!r} is not a timm HRNet")
        if fuse_upsample not in FUSE_UPSAMPLE:
            raise ValueError(f"HRNetMTL: fuse_upsample={fuse_upsample!r} is not one of {FUSE_UPSAMPLE}")
        if encoder_bn_momentum is not None and not 0 < encoder_bn_momentum <= 1:
            raise ValueError(f"HRNetMTL: encoder_bn_momentum={encoder_bn_momentum!r} must be in (0, 1] or None")
        self.encoder = create_backbone(variant, features_only=True, feature_location="", out_indices=(1, 2, 3, 4),
                                       in_chans=in_channels)
        for module in self.encoder.modules():
            if isinstance(module, nn.Upsample):
                module.mode = fuse_upsample
                module.align_corners = False if fuse_upsample == "bilinear" else None
            elif isinstance(module, nn.BatchNorm2d) and encoder_bn_momentum is not None:
                module.momentum = encoder_bn_momentum
        if pretrained_path is not None:
            load_checkpoint(self.encoder, pretrained_path, CLASSIFIER_KEYS)
        if task_bn:
            self._connections = convert_to_task_bn(self.encoder, self.task_names, prefix="encoder.")
        channels = sum(self.encoder.feature_info.channels())
        self.heads = nn.ModuleDict({t: hrnet_head(channels, c) for t, c in head_channels.items()})
        self._set_head_bias(head_bias)

    def _encode(self, x: Tensor, task: str | None = None) -> Tensor:
        check_divisible("HRNetMTL", x, STRIDE)
        scales = self.encoder(x)
        size = scales[0].shape[-2:]
        up = [F.interpolate(s, size=size, mode="bilinear", align_corners=False) for s in scales[1:]]
        return torch.cat([scales[0], *up], dim=1)

    def head(self, task: str, z: Tensor) -> Tensor:
        size = (z.shape[-2] * STRIDE, z.shape[-1] * STRIDE)
        return F.interpolate(self.heads[task](z), size=size, mode="bilinear", align_corners=False)
