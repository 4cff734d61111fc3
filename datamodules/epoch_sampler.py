"""A shuffling sampler whose order is a pure function of (seed, epoch), so a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of ``epoch``: a permutation of ``range(n)`` drawn from ``SeedSequence([seed, epoch])``."""
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.randperm(n, generator=torch.Generator().manual_seed(state))


class EpochSampler(Sampler[int]):
    """Yields :func:`epoch_permutation` of the current epoch; Lightning calls ``set_epoch`` before each epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_permutation(self.n, self.seed, self.epoch).tolist())
