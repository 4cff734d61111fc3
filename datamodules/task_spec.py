"""The plain-data contract by which a datamodule declares its tasks."""

from __future__ import annotations

from dataclasses import dataclass

TASK_KINDS = ("segmentation", "depth", "normals", "human_parts", "saliency", "edges")
BINARY_KINDS = ("saliency", "edges")
LABEL_KINDS = ("segmentation", "human_parts")


@dataclass(frozen=True)
class TaskSpec:
    """One task of a dataset, e.g. ``TaskSpec("semseg", "segmentation", num_classes=13, ignore_index=-1)``.

    Target conventions (batch ``targets[name]``): segmentation ``B x H x W`` int64 with ``ignore_index``
    on invalid pixels; depth ``B x 1 x H x W`` float with 0 invalid; normals ``B x 3 x H x W`` float unit
    vectors with the zero vector invalid; human_parts as segmentation (an image without annotated persons is
    all ``ignore_index``); saliency and edges ``B x 1 x H x W`` float in {0, 1}, ``ignore_index`` invalid.

    ``output_bias`` is where the head's output bias starts (depth: a typical depth of the dataset), so that a
    short run does not spend its budget learning the mean; 0 leaves the model's own initialisation.

    ``pos_weight`` (saliency, edges): the balanced BCE weight w of positive pixels (negatives get 1 - w);
    None weighs by the batch's share of negative pixels (HED). ``auxiliary`` tasks are trained but left out
    of Δm, Δp and mean rank (edges in CSO Tables 1-2).
    """

    name: str
    kind: str
    num_classes: int | None = None
    ignore_index: int = -1
    output_bias: float = 0.0
    pos_weight: float | None = None
    auxiliary: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"TaskSpec {self.name!r}: kind={self.kind!r} is not one of {TASK_KINDS}")
        if self.kind in LABEL_KINDS and (self.num_classes is None or self.num_classes < 2):
            raise ValueError(f"TaskSpec {self.name!r}: {self.kind} needs num_classes >= 2, got {self.num_classes}")
        if self.pos_weight is not None and (self.kind not in BINARY_KINDS or not 0 < self.pos_weight < 1):
            raise ValueError(f"TaskSpec {self.name!r}: pos_weight={self.pos_weight!r} needs a kind in {BINARY_KINDS} "
                             "and a value in (0, 1)")
