"""The 9-layer CNN of the FAMO CelebA protocol (Liu et al., FAMO, NeurIPS 2023, §5; docs/protocols.md P6)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from models.multitask import EncoderWithHeads


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class FAMOCelebANet(EncoderWithHeads):
    """Shared: conv blocks 3->64 | 64->128->128 | 128->256->256 | 256->512->512 (3x3, BN, ReLU; 2x2 max pooling
    after the first three stages), global average pooling, then Linear(512, 512, no bias), BN1d, ReLU twice.
    One ``Linear(512, C)`` head per task (logits; the protocol's sigmoid + BCE is the ``binary`` kind's loss).
    """

    def __init__(self, head_channels: Mapping[str, int], in_channels: int = 3, width: int = 64):
        super().__init__(head_channels)
        w = [width, 2 * width, 4 * width, 8 * width]
        self.encoder = nn.Sequential(
            *_conv(in_channels, w[0]), nn.MaxPool2d(2),
            *_conv(w[0], w[1]), *_conv(w[1], w[1]), nn.MaxPool2d(2),
            *_conv(w[1], w[2]), *_conv(w[2], w[2]), nn.MaxPool2d(2),
            *_conv(w[2], w[3]), *_conv(w[3], w[3]),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(w[3], w[3], bias=False), nn.BatchNorm1d(w[3]), nn.ReLU(inplace=True),
            nn.Linear(w[3], w[3], bias=False), nn.BatchNorm1d(w[3]), nn.ReLU(inplace=True),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(w[3], c) for name, c in head_channels.items()})
