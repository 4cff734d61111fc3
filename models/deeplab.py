"""Dilated ResNet-50 with one DeepLab ASPP head per task: the LibMTL NYUv2 / Cityscapes protocol (P2, P4.2).

The encoder is timm's ResNet-50 with output stride 8 (layer3 dilation 2, layer4 dilation 4, first block of each
at the previous dilation: the "dilated ResNet" of Yu et al., CVPR 2017, as LibMTL's ``resnet_dilated``). Each head is
DeepLabV3's ASPP (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv 1706.05587,
§3.3: a 1x1 branch, three 3x3 atrous branches at rates 12/24/36 and image pooling, concatenated, projected, dropout
0.5), then a 3x3 conv-BN-ReLU and a 1x1 conv; the output is upsampled bilinearly to the input size.
At NYUv2's 13/1/3 channels the model has 71,888,721 parameters (23,508,032 in the encoder), as LibMTL's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.backbones import convert_to_task_bn, create_backbone, load_checkpoint
from models.multitask import MultiTaskModel, check_divisible

CLASSIFIER_KEYS = ("fc.",)


def conv_bn_relu(c_in: int, c_out: int, kernel: int, dilation: int = 1) -> list[nn.Module]:
    pad = dilation * (kernel // 2)
    return [nn.Conv2d(c_in, c_out, kernel, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3 §3.3) with ``channels`` per branch, then a 1x1 projection."""

    def __init__(self, c_in: int, channels: int, rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(*conv_bn_relu(c_in, channels, 1))]
                                      + [nn.Sequential(*conv_bn_relu(c_in, channels, 3, r)) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(c_in, channels, 1))
        self.project = nn.Sequential(*conv_bn_relu((len(rates) + 2) * channels, channels, 1), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


def deeplab_head(c_in: int, out_channels: int, channels: int, rates: Sequence[int], dropout: float) -> nn.Sequential:
    return nn.Sequential(ASPP(c_in, channels, rates, dropout), *conv_bn_relu(channels, channels, 3),
                         nn.Conv2d(channels, out_channels, 1))


class DeepLabResNet(MultiTaskModel):
    """Shared dilated ResNet encoder (``z``: ``B x 2048 x H/8 x W/8`` for ResNet-50) and per-task ASPP heads.

    * ``backbone``: a timm ResNet name (default ``resnet50``; PASCAL-Context's P5 variant uses ``resnet18``).
    * ``pretrained_path``: a local ImageNet checkpoint of that ResNet (torchvision or timm keys, e.g. torchvision's
      ``resnet50-0676ba61.pth``); its ``fc.*`` classifier is dropped, every other key must fit. Never downloaded.
    * ``task_bn``: every BN of the encoder becomes one BN per task, each a copy of the (pretrained) BN (CSO §4.2).
    * ``aspp_channels``, ``atrous_rates``, ``dropout``: the head (256, 12/24/36, 0.5 in LibMTL).

    In training the image-pooling branch normalises one value per image, so a batch needs at least 2 images.
    """

    def __init__(self, head_channels: Mapping[str, int], backbone: str = "resnet50", output_stride: int = 8,
                 pretrained_path: str | Path | None = None, task_bn: bool = False, aspp_channels: int = 256,
                 atrous_rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5, in_channels: int = 3,
                 head_bias: Mapping[str, float] | None = None) -> None:
        super().__init__(head_channels, task_bn)
        if output_stride not in (8, 16, 32):
            raise ValueError(f"DeepLabResNet: output_stride must be 8, 16 or 32, got {output_stride}")
        if not backbone.startswith("resnet"):
            raise ValueError(f"DeepLabResNet: backbone={backbone!r} is not a timm ResNet")
        self.output_stride = output_stride
        self.encoder = create_backbone(backbone, output_stride=output_stride, num_classes=0, global_pool="",
                                       in_chans=in_channels)
        if pretrained_path is not None:
            load_checkpoint(self.encoder, pretrained_path, CLASSIFIER_KEYS)
        if task_bn:
            self._connections = convert_to_task_bn(self.encoder, self.task_names, prefix="encoder.")
        c = self.encoder.num_features
        self.heads = nn.ModuleDict({t: deeplab_head(c, ch, aspp_channels, atrous_rates, dropout)
                                    for t, ch in head_channels.items()})
        self._set_head_bias(head_bias)

    def _encode(self, x: Tensor, task: str | None = None) -> Tensor:
        check_divisible("DeepLabResNet", x, self.output_stride)
        return self.encoder(x)

    def head(self, task: str, z: Tensor) -> Tensor:
        size = (z.shape[-2] * self.output_stride, z.shape[-1] * self.output_stride)
        return F.interpolate(self.heads[task](z), size=size, mode="bilinear", align_corners=True)
