"""NYUv2 in the MTAN preprocessed release: 13-class segmentation, depth and surface normals at 288 x 384.

Layout and values: docs/data.md §4.1; protocol: docs/protocols.md P1 (SegNet-MTAN: Nash-MTL, CAGrad, FAMO) and P2
(LibMTL DeepLab). Silberman et al., "Indoor Segmentation and Support Inference from RGBD Images", ECCV 2012;
preprocessing by Liu et al., "End-to-End Multi-Task Learning with Attention" (MTAN), CVPR 2019.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.mtan_folder import Field, MTANFolderDataModule
from datamodules.npy_folder import ArraySpec, DatasetSource
from datamodules.task_spec import TaskSpec

NUM_CLASSES = 13
SOURCE = DatasetSource(
    name="nyuv2",
    archive="the MTAN preprocessed NYUv2 release (nyuv2.zip, 288x384 .npy files)",
    url="https://www.dropbox.com/sh/86nssgwm6hm3vkb/AACrnUQ4GxpdrBbLjb6n-mWNa?dl=0 (linked from the "
        "lorenmt/mtan README; LibMTL examples/nyu/download.sh fetches the same)",
    layout="    <root>/train/{image,label,depth,normal}/<i>.npy   i = 0..794\n"
           "    <root>/val/{image,label,depth,normal}/<i>.npy     i = 0..653 (the standard test split)\n"
           "    image (288, 384, 3) float in [0, 1]; label (288, 384) float in {-1, 0..12}; depth (288, 384, 1) "
           "float metres, 0 = invalid; normal (288, 384, 3) float in [-1, 1], zero vector = invalid",
    env_var="MTOBENCH_NYUV2",
)


class NYUv2DataModule(MTANFolderDataModule):
    """MTAN NYUv2 (``semseg``, ``depth``, ``normal``); ``val`` carved from ``train/`` (``val_size`` files).

    ``height``/``width`` are the files' resolution (288 x 384 in the release; other sizes are for test
    fixtures). ``check_sizes`` requires the release's 795 / 654 files.
    """

    name = "nyuv2"
    source = SOURCE
    SCORED_METRICS = ("semseg/miou", "semseg/pix_acc", "depth/abs_err", "depth/rel_err", "normal/normal_mean",
                      "normal/normal_median", "normal/within_11_25", "normal/within_22_5", "normal/within_30")
    """Δm, Δp and MR over the 9 metrics of the Nash-MTL and later tables, without depth RMSE (docs/protocols.md P1)."""
    split_sizes = {"train": 795, "val": 654}

    def __init__(self, root: str | None = None, height: int = 288, width: int = 384, batch_size: int = 2,
                 val_size: int = 95, split_seed: int = 0, augment: bool = True, drop_last: bool = False,
                 check_sizes: bool = True, num_workers: int = 0):
        super().__init__(root, height, width, batch_size, val_size, split_seed, augment, drop_last, check_sizes,
                         num_workers)

    @property
    def tasks(self) -> list[TaskSpec]:
        return [TaskSpec("semseg", "segmentation", num_classes=NUM_CLASSES, ignore_index=-1),
                TaskSpec("depth", "depth"), TaskSpec("normal", "normals")]

    def fields(self, split_dir: Path) -> list[Field]:
        h, w = self.height, self.width
        return [Field("image", "image", "image", ArraySpec("image", (h, w, 3), "f", "unit")),
                Field("semseg", "label", "segmentation",
                      ArraySpec("label", (h, w), "fi", "labels", num_classes=NUM_CLASSES, ignore_index=-1)),
                Field("depth", "depth", "depth", ArraySpec("depth", (h, w, 1), "f", "nonneg")),
                Field("normal", "normal", "normals", ArraySpec("normal", (h, w, 3), "f", "signed_unit"))]
