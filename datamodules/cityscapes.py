"""Cityscapes in the MTAN preprocessed release: 7-class (or 19 / 2) segmentation and inverse depth, 128 x 256.

Layout and values: docs/data.md §4.2; protocol: docs/protocols.md P4 (SegNet-MTAN: CAGrad, Nash-MTL, FAMO; LibMTL
DeepLab). Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016;
preprocessing by Liu et al. (MTAN), CVPR 2019. The depth target is MTAN's "inverse depth" (a normalised
disparity, 0 = invalid) and cannot be rebuilt bit-exactly from raw Cityscapes (mtan issue #25).
"""

from __future__ import annotations

from pathlib import Path

from datamodules.mtan_folder import Field, MTANFolderDataModule
from datamodules.npy_folder import ArraySpec, DataError, DatasetSource
from datamodules.task_spec import TaskSpec

CLASS_VARIANTS = (2, 7, 19)
SOURCE = DatasetSource(
    name="cityscapes",
    archive="the MTAN preprocessed Cityscapes release (128x256, 651 MB; older zip: cityscapes2.zip)",
    url="https://www.dropbox.com/sh/gaw6vh6qusoyms6/AADwWi0Tp3E3M4B2xzeGlsEna?dl=0 (linked from the "
        "lorenmt/mtan README; 256x512: https://www.dropbox.com/sh/vj349qgg57nthi9/AACdZmIuK-Qb_gP6w1HrA43ta?dl=0)",
    layout="    <root>/train/{image,label_7,depth}/<i>.npy   i = 0..2974 (label_2/, label_19/ for classes 2, 19;\n"
           "                                                 LibMTL's label/ is accepted for label_7/)\n"
           "    <root>/val/{image,label_7,depth}/<i>.npy     i = 0..499 (the standard test split)\n"
           "    image (128, 256, 3) float in [0, 1]; label (128, 256) float in {-1, 0..C-1}; depth (128, 256, 1) "
           "float inverse depth, 0 = invalid",
    env_var="MTOBENCH_CITYSCAPES",
)


class CityscapesDataModule(MTANFolderDataModule):
    """MTAN Cityscapes (``semseg``, ``depth``); ``val`` carved from ``train/`` (``val_size`` files).

    ``classes`` picks ``label_7/`` (default; ``label/`` accepted, LibMTL's name), ``label_19/`` or ``label_2/``.
    The default ``val_size`` 595 follows Xin et al.'s Cityscapes validation split (docs/protocols.md R.3).
    """

    name = "cityscapes"
    source = SOURCE
    SCORED_METRICS = ("semseg/miou", "semseg/pix_acc", "depth/abs_err", "depth/rel_err")
    """Δm, Δp and MR over the 4 metrics of the Nash-MTL and later tables, without depth RMSE (docs/protocols.md P4)."""
    split_sizes = {"train": 2975, "val": 500}

    def __init__(self, root: str | None = None, classes: int = 7, height: int = 128, width: int = 256,
                 batch_size: int = 8, val_size: int = 595, split_seed: int = 0, augment: bool = True,
                 drop_last: bool = False, check_sizes: bool = True, num_workers: int = 0):
        if classes not in CLASS_VARIANTS or isinstance(classes, bool):
            raise ValueError(f"CityscapesDataModule: classes={classes!r} must be one of {CLASS_VARIANTS}")
        self.classes = classes
        super().__init__(root, height, width, batch_size, val_size, split_seed, augment, drop_last, check_sizes,
                         num_workers)

    @property
    def tasks(self) -> list[TaskSpec]:
        return [TaskSpec("semseg", "segmentation", num_classes=self.classes, ignore_index=-1),
                TaskSpec("depth", "depth")]

    def label_folder(self, split_dir: Path) -> str:
        names = [f"label_{self.classes}"] + (["label"] if self.classes == 7 else [])
        for name in names:
            if (split_dir / name).is_dir():
                return name
        raise DataError(f"cityscapes: field 'label': {split_dir} has none of the folders {names} "
                        f"(classes={self.classes}; it contains {sorted(p.name for p in split_dir.iterdir())})")

    def fields(self, split_dir: Path) -> list[Field]:
        h, w = self.height, self.width
        return [Field("image", "image", "image", ArraySpec("image", (h, w, 3), "f", "unit")),
                Field("semseg", self.label_folder(split_dir), "segmentation",
                      ArraySpec("label", (h, w), "fi", "labels", num_classes=self.classes, ignore_index=-1)),
                Field("depth", "depth", "depth", ArraySpec("depth", (h, w, 1), "f", "nonneg"))]
