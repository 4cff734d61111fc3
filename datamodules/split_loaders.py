"""Loaders for a datamodule that holds its splits as ``self.datasets[split]`` (built by ``setup``)."""

from __future__ import annotations

import lightning
from torch.utils.data import DataLoader

from datamodules.sampling import EpochShuffleSampler


class SplitLoaders(lightning.LightningDataModule):
    """Train batches in the (seed, epoch) order of :class:`EpochShuffleSampler` (the last partial batch dropped);
    val and test in file order. A subclass sets ``datasets``, ``batch_size``, ``num_workers`` and ``seed``."""

    def _loader(self, split: str, sampler=None) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        return DataLoader(self.datasets[split], batch_size=self.batch_size, sampler=sampler,
                          drop_last=sampler is not None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self, seed: int | None = None) -> DataLoader:
        if "train" not in self.datasets:
            self.setup()
        sampler = EpochShuffleSampler(len(self.datasets["train"]), self.seed if seed is None else seed)
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
