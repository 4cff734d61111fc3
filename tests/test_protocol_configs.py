"""The paper-protocol suites (configs/protocols/) state the settings of docs/protocols.md P1, P2 and P4, name
a reference table that exists, and label their methods as that table's rows."""

from pathlib import Path

import pytest

from benchmark.config import load_suite
from benchmark.methods import available
from benchmark.scoring import BUNDLED_REFERENCE_TABLES, load_reference_tables

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "protocols"
# config -> (dataset, model, batch size, weight decay, augment, drop_last, selection, preset, labels not in the table)
EXPECTED = {
    "nashmtl_nyuv2": ("nyuv2", "segnet_mtan", 2, 0.0, True, False, "last10", "nashmtl", set()),
    "nashmtl_cityscapes": ("cityscapes", "segnet_mtan", 8, 0.0, True, False, "last10", "nashmtl", set()),
    "libmtl_nyuv2_deeplab": ("nyuv2", "deeplab_resnet50", 8, 1e-5, False, True, "best-val", "libmtl", set()),
    "imtl_nyuv2": ("nyuv2", "segnet_mtan", 2, 0.0, True, False, "last10", "nashmtl", {"GradNorm", "IMTL-L", "IMTL-H"}),
    "imtl_cityscapes": ("cityscapes", "segnet_mtan", 8, 0.0, True, False, "last10", "nashmtl",
                        {"GradNorm", "IMTL-L", "IMTL-H"}),
}


CHECKED_ELSEWHERE = {"cso_nyud", "cso_pascal", "cso_cityscapes", "mgda_ub_multimnist", "mgda_ub_celeba", "famo_celeba"}
"""Checked by tests/test_data_nyud.py, test_data_pascal.py (P3, P5), test_paper_tables.py, test_data_multimnist.py
and test_data_celeba.py."""


def test_every_protocol_config_is_checked():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(EXPECTED) | CHECKED_ELSEWHERE


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_protocol_settings(name):
    dataset, model, batch, wd, augment, drop_last, selection, preset, unlisted = EXPECTED[name]
    suite = load_suite(CONFIGS / f"{name}.yaml")
    t = suite.train
    assert (suite.dataset.name, suite.model.name, t.batch_size, t.weight_decay) == (dataset, model, batch, wd)
    assert (t.optimizer, t.lr, t.lr_schedule, t.lr_step_size, t.lr_gamma, t.epochs) == ("adam", 1e-4, "step", 100,
                                                                                       0.5, 200)
    params = suite.dataset.params
    assert (params["augment"], params["drop_last"], params["val_size"], params["root"]) == (augment, drop_last, 0, None)
    assert (suite.selection, suite.preset, suite.seeds, suite.stl) == (selection, preset, [0, 1, 2], True)
    assert {m.name for m in suite.methods} <= set(available())
    table = load_reference_tables(BUNDLED_REFERENCE_TABLES)[suite.reference_table]
    rows = {row["method"] for row in table["rows"]}
    labels = {m.key for m in suite.methods}
    assert labels - rows == unlisted
    expected_protocol = {"nyuv2": {"segnet_mtan": "nyuv2_segnet_mtan", "deeplab_resnet50": "nyuv2_deeplab_libmtl"},
                         "cityscapes": {"segnet_mtan": "cityscapes_segnet_mtan"}}[dataset][model]
    assert table["protocol"] == expected_protocol
