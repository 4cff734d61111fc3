"""Shims a recording driver applies from outside so that PyTorch-0.4-era reference code runs on current torch:
``x[0]`` of a 0-dim tensor returns the number (the old ``loss.data[0]``), and ``torch.dot`` accepts the
``(n, 1)`` / ``(1, n)`` shapes it took then."""

from __future__ import annotations

import torch


def install_legacy_tensor_shims() -> None:
    getitem = torch.Tensor.__getitem__

    def getitem0(self, index):
        if isinstance(index, int) and index == 0 and self.dim() == 0:
            return self.item()
        return getitem(self, index)

    torch.Tensor.__getitem__ = getitem0
    dot = torch.dot
    torch.dot = lambda a, b: dot(a.reshape(-1), b.reshape(-1))


def install_dataloader_next_shim() -> None:
    """``it.next()`` on a DataLoader iterator (PyTorch < 1.13 kept the Python 2 name; FAMO's trainers call it)."""
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    _BaseDataLoaderIter.next = _BaseDataLoaderIter.__next__
