"""Training-order samplers whose order is a pure function of (seed, epoch), so a resumed run sees the same batches."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``(seed, epoch)``; nearby pairs give unrelated seeds."""
    digest = hashlib.sha256(f"mtobench-order:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(size)`` drawn from ``epoch_seed(seed, epoch)``; with ``keyed``, yields
    ``(epoch, index)`` keys instead, so a dataset can draw the sample's augmentation from the same key in any
    worker process.

    Lightning calls ``set_epoch`` before every epoch. Nothing depends on how many numbers an earlier epoch
    drew, so a run resumed at epoch ``e`` gets the order an uninterrupted run gets. ``skip_once(n)`` makes the
    next iteration start after its first ``n`` indices (resuming mid-epoch); ``len`` stays the full epoch.
    """

    def __init__(self, size: int, seed: int, keyed: bool = False) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"EpochShuffleSampler: size={size!r} must be a positive int")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"EpochShuffleSampler: seed={seed!r} must be an int")
        self.size, self.seed, self.epoch, self.keyed = size, seed, 0, keyed
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_once(self, count: int) -> None:
        if not 0 <= count <= self.size:
            raise ValueError(f"EpochShuffleSampler: cannot skip {count} of {self.size} indices")
        self._skip = int(count)

    def order(self, epoch: int | None = None) -> list[int]:
        """The full order of ``epoch`` (default: the current one)."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch if epoch is None else epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        skip, self._skip = self._skip, 0
        order = self.order()[skip:]
        return iter([(self.epoch, i) for i in order] if self.keyed else order)

    def __len__(self) -> int:
        return self.size
