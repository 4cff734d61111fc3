"""The plain-data contract by which a datamodule declares its tasks."""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_KINDS = ("classification", "binary")
"""Kinds with one target per image (no spatial dimensions)."""
TASK_KINDS = ("segmentation", "depth", "normals") + IMAGE_KINDS


@dataclass(frozen=True)
class TaskSpec:
    """One task of a dataset, e.g. ``TaskSpec("semseg", "segmentation", num_classes=13, ignore_index=-1)``.

    Target conventions (batch ``targets[name]``): segmentation ``B x H x W`` int64 with ``ignore_index``
    on invalid pixels; depth ``B x 1 x H x W`` float with 0 invalid; normals ``B x 3 x H x W`` float unit
    vectors with the zero vector invalid; classification ``B`` int64 in [0, num_classes) or ``ignore_index``;
    binary ``B`` float or int with values 0/1.

    ``output_bias`` is where the head's output bias starts (depth: a typical depth of the dataset), so that a
    short run does not spend its budget learning the mean; 0 leaves the model's own initialisation.
    """

    name: str
    kind: str
    num_classes: int | None = None
    ignore_index: int = -1
    output_bias: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"TaskSpec {self.name!r}: kind={self.kind!r} is not one of {TASK_KINDS}")
        if self.kind == "segmentation" and (self.num_classes is None or self.num_classes < 2):
            raise ValueError(f"TaskSpec {self.name!r}: segmentation needs num_classes >= 2, got {self.num_classes}")
        if self.kind == "classification" and (self.num_classes is None or self.num_classes < 2):
            raise ValueError(f"TaskSpec {self.name!r}: classification needs num_classes >= 2, got {self.num_classes}")
