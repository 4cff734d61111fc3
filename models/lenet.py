"""MultiLeNet: the shared LeNet encoder with per-task MLP heads of Sener & Koltun 2018, docs/protocols.md P7."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from models.multitask import EncoderWithHeads


class MultiLeNet(EncoderWithHeads):
    """Shared: Conv5x5 (in->10), MaxPool2, ReLU, Conv5x5 (10->20), channel dropout, MaxPool2, ReLU, Linear (->50),
    ReLU. Each head: Linear (50->50), ReLU, dropout, Linear (50->C) giving logits (the paper's log-softmax + NLL is
    the cross-entropy of the ``classification`` kind).

    The channel dropout acts on the shared representation, so its mask is shared by every task, as in the
    paper's code. ``image_size`` fixes the flattened size: 28 gives the paper's 320.
    """

    def __init__(self, head_channels: Mapping[str, int], in_channels: int = 1, image_size: int = 28,
                 dropout: float = 0.5, hidden: int = 50):
        super().__init__(head_channels)
        if not 0 <= dropout < 1:
            raise ValueError(f"MultiLeNet: dropout={dropout!r} must be in [0, 1)")
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"MultiLeNet: image_size={image_size} is too small (needs at least 16)")
        self.image_size = image_size
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.Dropout2d(dropout), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(20 * side * side, hidden), nn.ReLU(),
        )
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, c))
            for name, c in head_channels.items()
        })

    def _encode(self, x: Tensor, task: str | None = None) -> Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"MultiLeNet: image size {tuple(x.shape[-2:])} differs from image_size="
                             f"{self.image_size}")
        return self.encoder(x)
