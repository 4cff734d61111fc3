"""A small SegNet-style encoder-decoder with a shared trunk and one head per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.task_norm import Connection, TaskBatchNorm2d, conditioned_on


def conv_bn_relu(c_in: int, c_out: int, tasks: Sequence[str] | None = None) -> nn.Sequential:
    """3x3 conv, BatchNorm (one per task when ``tasks`` is given), ReLU."""
    norm = TaskBatchNorm2d(c_out, tasks) if tasks else nn.BatchNorm2d(c_out)
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm, nn.ReLU(inplace=True))


def pool_with_mask(x: Tensor) -> tuple[Tensor, Tensor]:
    """2x2 max pooling that also returns where each maximum was, as a 0/1 mask of the input's size."""
    pooled = F.max_pool2d(x, 2)
    return pooled, (x == F.interpolate(pooled, scale_factor=2.0, mode="nearest")).to(x.dtype)


def pool_with_first_max_mask(x: Tensor) -> tuple[Tensor, Tensor]:
    """2x2 max pooling with a 0/1 mask of the *first* maximum of each window in row-major order, the position
    ``max_pool2d(return_indices=True)`` picks and ``MaxUnpool2d`` writes to (ties, e.g. windows of ReLU zeros,
    are frequent). Elementwise, so deterministic on every device."""
    b, c, h, w = x.shape
    windows = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // 2, w // 2, 4)
    pooled = windows.amax(dim=-1)
    hit = windows == pooled.unsqueeze(-1)
    first = hit & (hit.cumsum(dim=-1) == 1)
    mask = first.reshape(b, c, h // 2, w // 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)
    return F.max_pool2d(x, 2), mask.to(x.dtype)


def unpool_with_mask(x: Tensor, mask: Tensor) -> Tensor:
    """SegNet's max-unpooling: each value goes back to the position of its maximum, zeros elsewhere.

    Written as nearest upsampling times the argmax mask, which is deterministic on every device (unlike
    ``max_unpool2d``); positions that tied for the maximum all receive the (equal) value.
    """
    return F.interpolate(x, scale_factor=2.0, mode="nearest") * mask


class SegNetMTL(nn.Module):
    """SegNet (Badrinarayanan et al., TPAMI 2017) trunk shared by all tasks, with light per-task heads.

    ``encode`` maps the image to the shared representation ``z`` (full resolution, ``width`` channels): an
    encoder of ``levels`` conv blocks with max pooling, and a decoder that unpools to the stored argmax positions.
    Each head is a 3x3 conv block followed by a 1x1 projection to that task's output channels. The shared
    parameters are those of ``encode``. ``head_bias`` sets the initial output bias of the named heads.

    With ``task_bn=True`` every trunk conv is followed by one BatchNorm per task (as CSO requires, Jeong & Yoon,
    CVPR 2024, §4.2): ``encode(x, task)`` then runs the trunk with that task's BNs, the per-task BN parameters
    count as that task's parameters, and ``connections()`` lists the conv-to-BN pairs.
    """

    def __init__(self, head_channels: Mapping[str, int], width: int = 16, levels: int = 3, in_channels: int = 3,
                 task_bn: bool = False, head_bias: Mapping[str, float] | None = None):
        super().__init__()
        if width < 1 or levels < 1:
            raise ValueError(f"SegNetMTL: width and levels must be >= 1, got width={width}, levels={levels}")
        if not head_channels:
            raise ValueError("SegNetMTL: head_channels is empty; at least one task is needed")
        widths = [width * 2**i for i in range(levels)]
        tasks = list(head_channels) if task_bn else None
        self.task_bn = task_bn
        self.stem = conv_bn_relu(in_channels, widths[0], tasks)
        self.down = nn.ModuleList(
            nn.Sequential(conv_bn_relu(c, c, tasks), conv_bn_relu(c, widths[min(i + 1, levels - 1)], tasks))
            for i, c in enumerate(widths)
        )
        self.up = nn.ModuleList(
            nn.Sequential(conv_bn_relu(widths[min(i + 1, levels - 1)], c, tasks), conv_bn_relu(c, c, tasks))
            for i, c in reversed(list(enumerate(widths)))
        )
        self.heads = nn.ModuleDict({name: self._head(width, ch) for name, ch in head_channels.items()})
        for name, bias in (head_bias or {}).items():
            if name not in self.heads:
                raise ValueError(f"SegNetMTL: head_bias names task {name!r}; tasks are {list(self.heads)}")
            nn.init.constant_(self.heads[name][-1].bias, bias)
        self.levels = levels
        blocks = {"stem": self.stem}
        blocks.update({f"down{i}.{j}": b for i, pair in enumerate(self.down) for j, b in enumerate(pair)})
        blocks.update({f"up{i}.{j}": b for i, pair in enumerate(self.up) for j, b in enumerate(pair)})
        self._connections = [Connection(name, b[0], b[1]) for name, b in blocks.items() if task_bn]

    def connections(self) -> list[Connection]:
        """The shared convs each followed by per-task BatchNorm, in forward order (empty without ``task_bn``)."""
        return list(self._connections)

    @staticmethod
    def _head(width: int, out_channels: int) -> nn.Sequential:
        return nn.Sequential(conv_bn_relu(width, width), nn.Conv2d(width, out_channels, 1))

    def encode(self, x: Tensor, task: str | None = None) -> Tensor:
        """The shared representation; with ``task_bn`` it is task-conditioned and ``task`` is required."""
        if self.task_bn:
            if task is None:
                raise ValueError(f"SegNetMTL(task_bn=True).encode needs a task, one of {list(self.heads)}")
            with conditioned_on(self, task):
                return self._encode(x)
        return self._encode(x)

    def _encode(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2**self.levels or x.shape[-2] % 2**self.levels:
            raise ValueError(
                f"SegNetMTL: image size {tuple(x.shape[-2:])} must be divisible by 2**levels = {2**self.levels}"
            )
        h = self.stem(x)
        masks = []
        for block in self.down:
            h, mask = pool_with_mask(block(h))
            masks.append(mask)
        for block, mask in zip(self.up, reversed(masks), strict=True):
            h = block(unpool_with_mask(h, mask))
        return h

    def head(self, task: str, z: Tensor) -> Tensor:
        return self.heads[task](z)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.task_bn:
            return {task: head(self.encode(x, task)) for task, head in self.heads.items()}
        z = self.encode(x)
        return {task: head(z) for task, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for t in self.heads for p in self.task_parameters(t)}
        return [p for p in self.parameters() if id(p) not in own]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        norms = [p for c in self._connections for p in c.norm.norms[task].parameters()]
        return list(self.heads[task].parameters()) + norms


def count_parameters(params: list[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params)
