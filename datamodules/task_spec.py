"""The plain-data contract by which a datamodule declares its tasks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """One task of a dataset, e.g. ``TaskSpec("semseg", "segmentation", num_classes=13, ignore_index=-1)``.

    Target conventions (batch ``targets[name]``): segmentation ``B x H x W`` int64 with ``ignore_index``
    on invalid pixels; depth ``B x 1 x H x W`` float with 0 invalid; normals ``B x 3 x H x W`` float unit
    vectors with the zero vector invalid; human_parts as segmentation (an image without annotated persons is
    all ``ignore_index``); saliency and edges ``B x 1 x H x W`` float in {0, 1}, ``ignore_index`` invalid;
    classification ``B`` int64 in [0, num_classes) or ``ignore_index``; binary ``B`` float or int with values 0/1.

    ``output_bias`` is where the head's output bias starts (depth: a typical depth of the dataset), so that a
    short run does not spend its budget learning the mean; 0 leaves the model's own initialisation.

    ``pos_weight`` (saliency, edges): the balanced BCE weight w of positive pixels (negatives get 1 - w);
    None weighs by the batch's share of negative pixels (HED). ``auxiliary`` tasks are trained but left out
    of Δm, Δp and mean rank (edges in CSO Tables 1-2). ``loss_variant`` picks one of the kind's alternative losses
    ("" = its default; normals: ``"l1"``, see ``benchmark.tasks.normals``).

    ``kind`` names an entry of the task-kind registry (``benchmark.tasks.KINDS``), which checks the fields that
    kind needs (e.g. ``num_classes``) wherever the spec is used; here only the kind-independent ranges.
    """

    name: str
    kind: str
    num_classes: int | None = None
    ignore_index: int = -1
    output_bias: float = 0.0
    pos_weight: float | None = None
    auxiliary: bool = False
    loss_variant: str = ""

    def __post_init__(self) -> None:
        if not self.kind or not isinstance(self.kind, str):
            raise ValueError(f"TaskSpec {self.name!r}: kind={self.kind!r} must be a non-empty string")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"TaskSpec {self.name!r}: num_classes must be >= 2 or None, got {self.num_classes}")
        if self.pos_weight is not None and not 0 < self.pos_weight < 1:
            raise ValueError(f"TaskSpec {self.name!r}: pos_weight={self.pos_weight!r} must be in (0, 1)")
