"""SegNet "split" and SegNet-MTAN (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019),
the architecture of the NYUv2 / Cityscapes SegNet-MTAN protocol (``docs/protocols.md`` P1, P4).

Layer for layer as the MTAN / Nash-MTL code builds them (nash-mtl ``experiments/nyuv2/models.py``): at full width
(64) and NYUv2's 13/1/3 output channels SegNet-MTAN has 44,229,073 parameters and the standard split 25,055,185.
Unpooling is written as nearest upsampling times a mask of each pooling window's *first* maximum
(``models.segnet.pool_with_first_max_mask``): deterministic on every device and equal to ``MaxPool2d`` /
``MaxUnpool2d`` even where a window's maxima tie (windows of ReLU zeros are common; marking every tied position,
as ``models.segnet.pool_with_mask`` does, changed the step-1 losses by ~1%). Checked against the reference by
``tests/test_reference_nashmtl.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.multitask import MultiTaskModel, check_divisible
from models.segnet import pool_with_first_max_mask, unpool_with_mask
from models.task_norm import Connection, TaskBatchNorm2d

LEVELS = 5
VARIANTS = ("standard", "wide", "deep")


def conv_layer(c_in: int, c_out: int, tasks: Sequence[str] | None, deep: bool = False) -> nn.Sequential:
    """3x3 conv (biased, as the reference) -> BatchNorm (one per task when ``tasks`` is given) -> ReLU; ``deep``
    stacks a second such conv (``c_out -> c_out``), the "Split, Deep" variant."""
    def one(a: int, b: int) -> list[nn.Module]:
        norm = TaskBatchNorm2d(b, tasks) if tasks else nn.BatchNorm2d(b)
        return [nn.Conv2d(a, b, 3, padding=1), norm, nn.ReLU(inplace=True)]

    return nn.Sequential(*one(c_in, c_out), *(one(c_out, c_out) if deep else []))


def attention_layer(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """MTAN's attention module: 1x1 conv -> BN -> ReLU -> 1x1 conv -> BN -> sigmoid (a soft mask)."""
    return nn.Sequential(nn.Conv2d(c_in, c_mid, 1), nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True),
                         nn.Conv2d(c_mid, c_out, 1), nn.BatchNorm2d(c_out), nn.Sigmoid())


def prediction_head(width: int, out_channels: int) -> nn.Sequential:
    """The reference ``pred_task``: 3x3 conv -> 1x1 conv to the task's channels, no BN or activation between."""
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, out_channels, 1))


def conv_blocks(seq: nn.Module, name: str) -> list[tuple[str, nn.Sequential]]:
    """The (conv, BN, ReLU) triples inside ``seq`` (a ``conv_layer`` or a Sequential of them), each named by the
    module path of its conv."""
    if isinstance(seq[0], nn.Conv2d):
        return [(f"{name}.{i}", seq[i:i + 3]) for i in range(0, len(seq), 3)]
    return [pair for j, sub in enumerate(seq) for pair in conv_blocks(sub, f"{name}.{j}")]


@dataclass
class TrunkFeatures:
    """Per level of the shared SegNet: encoder first/second conv outputs, decoder unpooled input and output."""

    enc_first: list[Tensor]
    enc_last: list[Tensor]
    dec_in: list[Tensor]
    dec_out: list[Tensor]


class SegNetTrunk(nn.Module):
    """The shared 5-level SegNet: filters ``[w, 2w, 4w, 8w, 8w]`` (``wide``: last ``16w``), one extra conv per level
    in levels 0-1 and two in levels 2-4, max-pooling and unpooling to the argmax positions."""

    def __init__(self, width: int, in_channels: int, tasks: Sequence[str] | None, variant: str = "standard"):
        super().__init__()
        f = [width, 2 * width, 4 * width, 8 * width, (16 if variant == "wide" else 8) * width]
        deep = variant == "deep"
        self.filters = f
        self.enc_in = nn.ModuleList(conv_layer(([in_channels] + f)[i], f[i], tasks, deep) for i in range(LEVELS))
        self.dec_in = nn.ModuleList(conv_layer(f[i], f[max(i - 1, 0)], tasks, deep) for i in range(LEVELS))
        self.enc_conv = nn.ModuleList(self._extra(f[i], i, tasks, deep) for i in range(LEVELS))
        self.dec_conv = nn.ModuleList(self._extra(f[max(i - 1, 0)] if i else f[0], i, tasks, deep)
                                      for i in range(LEVELS))

    @staticmethod
    def _extra(c: int, level: int, tasks: Sequence[str] | None, deep: bool) -> nn.Sequential:
        if level < 2:
            return conv_layer(c, c, tasks, deep)
        return nn.Sequential(conv_layer(c, c, tasks, deep), conv_layer(c, c, tasks, deep))

    def named_blocks(self) -> list[tuple[str, nn.Sequential]]:
        """Every (conv, BN, ReLU) of the trunk in forward order, named by its module path."""
        order = []
        for i in range(LEVELS):
            order += [(f"enc_in.{i}", self.enc_in[i]), (f"enc_conv.{i}", self.enc_conv[i])]
        for i in reversed(range(LEVELS)):
            order += [(f"dec_in.{i}", self.dec_in[i]), (f"dec_conv.{i}", self.dec_conv[i])]
        return [pair for name, seq in order for pair in conv_blocks(seq, name)]

    def forward(self, x: Tensor) -> TrunkFeatures:
        feats = TrunkFeatures([], [], [], [])
        masks, h = [], x
        for i in range(LEVELS):
            feats.enc_first.append(self.enc_in[i](h))
            feats.enc_last.append(self.enc_conv[i](feats.enc_first[-1]))
            h, mask = pool_with_first_max_mask(feats.enc_last[-1])
            masks.append(mask)
        for i in reversed(range(LEVELS)):
            feats.dec_in.append(unpool_with_mask(h, masks[i]))
            h = self.dec_conv[i](self.dec_in[i](feats.dec_in[-1]))
            feats.dec_out.append(h)
        return feats


def xavier_init(module: nn.Module) -> None:
    """The reference initialisation: xavier-normal conv weights, zero biases, BN weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SegNetSplit(MultiTaskModel):
    """SegNet "split" (MTAN paper §4, the ``SegNetSplit`` of the MTAN / Nash-MTL code): the whole 5-level SegNet is
    shared, ``z`` is its full-resolution output (``width`` channels), and each task has a prediction head (3x3 conv,
    1x1 conv). ``variant``: ``standard``, ``wide`` (last level 16w) or ``deep`` (two convs per conv layer).

    ``task_bn=True``: every trunk conv is followed by one BN per task (CSO, Jeong & Yoon, CVPR 2024, §4.2).
    """

    def __init__(self, head_channels: Mapping[str, int], width: int = 64, variant: str = "standard",
                 in_channels: int = 3, task_bn: bool = False, head_bias: Mapping[str, float] | None = None):
        super().__init__(head_channels, task_bn)
        if variant not in VARIANTS:
            raise ValueError(f"SegNetSplit: variant={variant!r} is not one of {VARIANTS}")
        if width < 1:
            raise ValueError(f"SegNetSplit: width must be >= 1, got {width}")
        self.trunk = SegNetTrunk(width, in_channels, self.task_names if task_bn else None, variant)
        self.heads = nn.ModuleDict({t: prediction_head(width, c) for t, c in head_channels.items()})
        xavier_init(self)
        self._set_head_bias(head_bias)
        if task_bn:
            self._connections = [Connection(f"trunk.{n}", b[0], b[1]) for n, b in self.trunk.named_blocks()]

    def _encode(self, x: Tensor, task: str | None = None) -> Tensor:
        check_divisible("SegNetSplit", x, 2**LEVELS)
        return self.trunk(x).dec_out[-1]

    def head(self, task: str, z: Tensor) -> Tensor:
        return self.heads[task](z)


class SegNetMTAN(MultiTaskModel):
    """SegNet-MTAN (Liu et al., CVPR 2019, §3): the SegNet trunk plus, per task, soft-attention modules on every
    encoder and decoder level (§3.1, Fig. 2), with the shared 3x3 conv layers between attention levels.

    ``z`` is the attended full-resolution features of every task, concatenated along channels (``T * width``
    channels, in task order); ``head(task, z)`` reads its own block. With ``task_bn`` (every conv of the trunk and
    of the shared attention convs gets one BN per task, CSO §4.2), ``encode(x, task)`` computes that task's block
    only and ``head`` reads all of ``z``.

    ``attention_shared`` chooses what counts as shared (``docs/methods.md`` §0.1):

    * ``True`` (default, the Nash-MTL / FAMO / FairGrad code behind the SegNet-MTAN tables: every parameter not in a
      prediction head): the attention modules are shared parameters, on which the other tasks' gradients are 0;
    * ``False`` (the CAGrad code's ``shared_modules``): each task's attention modules are its own parameters. Since
      the shared attention convs then come after task parameters, ``z`` is not a shared representation and
      ``grad_source="rep_*"`` is refused.
    """

    def __init__(self, head_channels: Mapping[str, int], width: int = 64, attention_shared: bool = True,
                 in_channels: int = 3, task_bn: bool = False, head_bias: Mapping[str, float] | None = None):
        super().__init__(head_channels, task_bn)
        if width < 1:
            raise ValueError(f"SegNetMTAN: width must be >= 1, got {width}")
        tasks = self.task_names if task_bn else None
        self.width, self.attention_shared = width, bool(attention_shared)
        self.trunk = SegNetTrunk(width, in_channels, tasks)
        f = self.trunk.filters
        self.enc_att_conv = nn.ModuleList(conv_layer(f[i], f[min(i + 1, LEVELS - 1)], tasks) for i in range(LEVELS))
        self.dec_att_conv = nn.ModuleList(conv_layer(f[i], f[max(i - 1, 0)] if i < LEVELS - 1 else f[i], tasks)
                                          for i in range(LEVELS))
        self.attention = nn.ModuleDict({t: self._attention(f) for t in self.task_names})
        self.heads = nn.ModuleDict({t: prediction_head(width, c) for t, c in head_channels.items()})
        xavier_init(self)
        self._set_head_bias(head_bias)
        if not self.attention_shared:
            self.rep_unsupported = ("SegNetMTAN(attention_shared=False) has task-specific attention inside the "
                                    "encoder, followed by shared convs, so z is not a shared representation")
        if task_bn:
            blocks = [(f"trunk.{n}", b) for n, b in self.trunk.named_blocks()]
            blocks += conv_blocks(self.enc_att_conv, "enc_att_conv") + conv_blocks(self.dec_att_conv, "dec_att_conv")
            self._connections = [Connection(n, b[0], b[1]) for n, b in blocks]

    @staticmethod
    def _attention(f: list[int]) -> nn.ModuleDict:
        encoder = [attention_layer(f[0], f[0], f[0])]
        encoder += [attention_layer(2 * f[i], f[i], f[i]) for i in range(1, LEVELS)]
        decoder = [attention_layer(2 * f[0], f[0], f[0])]
        decoder += [attention_layer(f[i] + f[i - 1], f[i - 1], f[i - 1]) for i in range(1, LEVELS)]
        return nn.ModuleDict({"encoder": nn.ModuleList(encoder), "decoder": nn.ModuleList(decoder)})

    def _task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task]] + ([] if self.attention_shared else [self.attention[task]])

    def _attend(self, task: str, feats: TrunkFeatures) -> Tensor:
        """One task's attention path (MTAN §3.1): masks on the encoder then decoder features of every level."""
        att = self.attention[task]
        h = None
        for i in range(LEVELS):
            inp = feats.enc_first[i] if h is None else torch.cat((feats.enc_first[i], h), dim=1)
            h = F.max_pool2d(self.enc_att_conv[i](att["encoder"][i](inp) * feats.enc_last[i]), 2)
        for j, i in enumerate(reversed(range(LEVELS))):
            up = self.dec_att_conv[i](F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=True))
            h = att["decoder"][i](torch.cat((feats.dec_in[j], up), dim=1)) * feats.dec_out[j]
        return h

    def _encode(self, x: Tensor, task: str | None = None) -> Tensor:
        check_divisible("SegNetMTAN", x, 2**LEVELS)
        feats = self.trunk(x)
        if task is not None:
            return self._attend(task, feats)
        return torch.cat([self._attend(t, feats) for t in self.task_names], dim=1)

    def head(self, task: str, z: Tensor) -> Tensor:
        if not self.task_bn:
            k = self.task_names.index(task)
            z = z[:, k * self.width:(k + 1) * self.width]
        return self.heads[task](z)
