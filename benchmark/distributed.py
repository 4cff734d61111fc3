"""Explicit reductions across data-parallel ranks, for gradient methods under DDP (see ``docs/ddp.md``).

A gradient method (MGDA, PCGrad, CAGrad, ...) is non-linear in the per-task gradients, so averaging each rank's
update would not give the update of the global batch. The engine therefore reduces what the method reads
(the Jacobian, the representation Gramian, ...) *before* the method aggregates, and every rank then computes the
same update. :class:`GradSync` does those reductions over ``torch.distributed`` and counts the bytes it moves.

Every reduction here is a mean or sum over ranks of equal-sized local batches: the global loss is taken to be
the mean of the per-rank losses, as in ordinary DDP.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


class GradSync:
    """All-reduce and all-gather over the default process group; ``bytes`` counts what this rank sent."""

    def __init__(self, group=None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("GradSync needs an initialised torch.distributed process group")
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.bytes = 0

    def _all_reduce(self, tensor: Tensor, op=dist.ReduceOp.SUM) -> Tensor:
        out = tensor.detach().contiguous().clone()
        dist.all_reduce(out, op=op, group=self.group)
        self.bytes += out.numel() * out.element_size()
        return out

    def sum(self, tensor: Tensor) -> Tensor:
        """The sum over ranks (a new tensor)."""
        return self._all_reduce(tensor)

    def mean(self, tensor: Tensor) -> Tensor:
        """The mean over ranks (a new tensor)."""
        return self._all_reduce(tensor) / self.world_size

    def gather(self, tensor: Tensor, dim: int) -> Tensor:
        """Every rank's ``tensor`` concatenated along ``dim`` in rank order; the ranks' shapes must agree."""
        shape = torch.tensor(tensor.shape, dtype=torch.int64)
        extremes = self._all_reduce(torch.cat([shape, -shape]), op=dist.ReduceOp.MAX)
        if not torch.equal(extremes, torch.cat([shape, -shape])):
            raise ValueError(f"GradSync.gather: rank {self.rank} has shape {tuple(tensor.shape)}, another rank "
                             "differs; DDP needs equal local batch sizes (DistributedSampler pads to them)")
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.detach().contiguous(), group=self.group)
        self.bytes += tensor.numel() * tensor.element_size()
        return torch.cat(parts, dim=dim)

    def mean_grads_(self, params: Iterable[Tensor]) -> None:
        """Replace each present ``.grad`` by its mean over ranks, in one flat all-reduce per dtype."""
        _mean_flat_(self, [p.grad for p in params if p.grad is not None])

    def mean_buffers_(self, module: nn.Module) -> None:
        """Average the floating-point buffers (BatchNorm running statistics), so every rank holds the same model."""
        _mean_flat_(self, [b for b in module.buffers() if b.is_floating_point()])

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        dist.broadcast(tensor, src, group=self.group)
        return tensor


def _mean_flat_(sync: GradSync, tensors: list[Tensor]) -> None:
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = sync.mean(torch.cat([t.reshape(-1) for t in group]))
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def broadcast_generator_(sync: GradSync, generator: torch.Generator) -> None:
    """Give every rank rank 0's generator state, so a method's random draws agree across ranks."""
    generator.set_state(sync.broadcast_(generator.get_state()))


def no_ddp_sync(wrapper: nn.Module | None) -> AbstractContextManager:
    """Switch off DDP's own gradient all-reduce while the engine reduces explicitly (no-op without DDP)."""
    return wrapper.no_sync() if isinstance(wrapper, DistributedDataParallel) else nullcontext()
