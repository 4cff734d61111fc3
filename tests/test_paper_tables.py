"""``mtobench table``: registry, protocol run on a test-local suite and reference table, comparison numbers
recomputed here, flags of published Δ that do not recompute, missing data, and --dry-run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.records import load_records
from benchmark.report import paper_tables
from benchmark.report.paper_tables import TABLES_FILE, compare, load_protocol, load_registry, match_rows, resolve
from benchmark.report.summary import summarize
from benchmark.scoring import delta_m, load_reference_tables
from datamodules import DATAMODULES
from tests.test_leaderboard import make_records

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = """
tables:
  - id: toy_table
    title: "Toy paper, Table 2"
    source: {paper: "Toy et al. 2030", table: "Table 2"}
    status: primary
    metrics:
      - {key: miou, task: semseg, direction: higher, unit: percent}
      - {key: abs_err, task: depth, direction: lower, unit: metres}
      - {key: odsf, task: edge, direction: higher, unit: percent}
    delta: {name: delta_m, direction: lower, metrics: [miou, abs_err]}
    baseline: {method: STL, source: "Toy et al. 2030, Table 2", values: {miou: 20.0, abs_err: 1.5, odsf: 50.0}}
    rows:
      - {method: EW, values: {miou: 22.0, abs_err: 1.2, odsf: 51.0}, delta_reported: -15.0}
      - {method: Random Weights, values: {miou: 18.0, abs_err: 1.5, odsf: 49.0}, delta_reported: 9.0}
      - {method: Nash-MTL, values: {miou: 30.0, abs_err: 1.0, odsf: 55.0}, delta_reported: -41.67}
"""
SUITE = """
name: toy_protocol
dataset:
  name: {dataset}
  params: {{height: 16, width: 24, n_train: 16, n_val: 8, n_test: 8, supersample: 1, generate_workers: 1,
            data_dir: {data}}}
model: {{name: segnet, params: {{width: 4, levels: 2}}}}
train: {{epochs: 1, batch_size: 8, jacobian_mode: loop}}
methods: [{{name: ew}}, {{name: rlw, label: random-weights}}]
seeds: [0, 1]
stl: false
stl_baseline: toy_table
reference_table: toy_table
output_dir: {out}
leaderboard: {out}/leaderboard.md
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    reference = tmp_path / "reference_tables.yaml"
    reference.write_text(REFERENCE)
    monkeypatch.setenv("MTOBENCH_SHARED", str(reference))
    (tmp_path / "configs").mkdir()
    suite = tmp_path / "configs" / "toy.yaml"
    suite.write_text(SUITE.format(dataset="synthetic_scenes", data=tmp_path / "data", out=tmp_path / "runs"))
    registry = tmp_path / "configs" / "tables.yaml"
    registry.write_text("aliases: {Random Weights: random-weights}\ntables:\n  toy: {suite: configs/toy.yaml, "
                        "reference: toy_table, train_size: 100, input_shape: [3, 16, 24]}\n")
    return tmp_path, registry


def test_registry_names_every_protocol_and_its_table():
    entries = load_registry()
    for name in ("nashmtl-nyuv2", "nashmtl-cityscapes", "cso-nyud", "cso-pascal", "cso-cityscapes", "cso-ablation",
                 "mgda-ub-multimnist", "imtl-cityscapes"):
        assert name in entries, name
    tables = load_reference_tables()
    assert all(e.reference in tables for e in entries.values())
    assert entries["cso-cityscapes"].suite == TABLES_FILE.parent / "protocols" / "cso_cityscapes.yaml"
    cso = load_suite(entries["cso-cityscapes"].suite)
    assert (cso.dataset.name, cso.model.name, cso.stl_baseline) == ("cityscapes", "segnet", "cso_t3_cityscapes")
    assert [m.model for m in cso.methods if m.name == "cso"] == [{"task_bn": True}]
    t = cso.train
    assert (t.optimizer, t.lr, t.lr_schedule, t.lr_step_size, t.lr_gamma, t.epochs, t.batch_size) == (
        "adam", 5e-5, "step", 100, 0.5, 200, 8)
    assert cso.seeds == [0, 1, 2] and cso.reference_table == "cso_t3_cityscapes"
    published = {r["method"] for r in tables["cso_t3_cityscapes"]["rows"]}
    assert {m.key for m in cso.methods} <= published
    with pytest.raises(KeyError, match="unknown table 'nashmtl'.*nashmtl-cityscapes"):
        resolve("nashmtl")


def test_match_rows_ignores_case_and_punctuation_then_aliases():
    found = match_rows(["Nash-MTL", "LS", "GD", "IMTL-G", "CAGrad"], ["nash_mtl", "LS", "ew", "imtl_g"],
                       {"LS": "ew", "GD": "ew"})
    assert found == {"Nash-MTL": "nash_mtl", "LS": "LS", "GD": "ew", "IMTL-G": "imtl_g", "CAGrad": None}


def test_a_suite_must_name_the_registry_table(setup):
    tmp_path, registry = setup
    entry = resolve("toy", registry)
    with pytest.raises(ValueError, match="reference_table='other'.*registry says 'toy_table'"):
        load_protocol(entry, ["--suite.reference_table", "other"])


def test_table_runs_the_protocol_and_compares(setup, capsys):
    tmp_path, registry = setup
    assert main(["table", "toy", "--tables", str(registry)]) == 0
    text = (tmp_path / "runs" / "toy_protocol" / "table_toy.md").read_text()
    out = capsys.readouterr().out
    assert "Toy paper, Table 2" in out and "comparison written to" in out
    records, _ = load_records(tmp_path / "runs")
    ew = [r for r in records if r["method"] == "ew"]
    miou = sum(r["epochs"][-1]["test"]["semseg/miou"] for r in ew) / 2
    abs_err = sum(r["epochs"][-1]["test"]["depth/abs_err"] for r in ew) / 2
    ours_delta = delta_m({"miou": miou, "abs_err": abs_err}, {"miou": 20.0, "abs_err": 1.5},
                         {"miou": "higher", "abs_err": "lower"})
    lines = text.splitlines()
    row = lines.index(next(line for line in lines if line.startswith("| EW | published")))
    assert lines[row] == "| EW | published | 22.00 | 1.20 | 51.00 | -15.00 |"
    assert lines[row + 1].startswith(f"| ew | ours (2 seeds) | {miou:.2f} ± ")
    assert lines[row + 1].endswith(f"| — | {ours_delta:.2f} |")
    assert lines[row + 2] == (f"|  | difference | {miou - 22.0:.2f} | {abs_err - 1.2:.2f} | — | "
                              f"{ours_delta + 15.0:.2f} |")
    assert any(line.startswith("| random-weights | ours (2 seeds) |") for line in lines)
    assert "| Nash-MTL | published | 30.00 | 1.00 | 55.00 | -41.67 |" in lines
    assert "| Random Weights | published | 18.00 | 1.50 | 49.00 | 9.00 ⚠ recomputes to 5.00 |" in lines
    assert "* Random Weights: published delta_m 9.0 recomputes to 5.00 from its row" in text
    assert "| STL | published baseline | 20.00 | 1.50 | 50.00 |  |" in lines
    assert "| STL | our baseline | 20.00 | 1.50 | — |  |" in lines
    assert "STL baseline: published `toy_table` (Toy et al. 2030, Table 2" in text
    assert "do not log: odsf" in text and (tmp_path / "runs" / "leaderboard.md").is_file()


def test_bundled_known_typos_are_flagged():
    tables = load_reference_tables(Path(__file__).resolve().parent.parent / "benchmark" / "reference_tables.yaml")
    (summary,) = summarize(make_records())
    flagged = {f.split(":")[0] for f in compare(tables["cso_t3_cityscapes"], summary, {}, "t").flagged}
    assert flagged == {"GD w/ Recon", "PCGrad", "CSO"}
    assert [f.split(":")[0] for f in compare(tables["nashmtl_nyuv2_segnet"], summary, {}, "t").flagged] == ["IMTL-G"]


class NeedsFiles:
    """A datamodule whose data is absent, as the real ones report it."""

    tasks = []

    def __init__(self, **params):
        self.root = params.get("data_dir")

    def prepare_data(self):
        raise FileNotFoundError(f"toy: folder {self.root} does not exist; download it from https://example.org/toy "
                                "and lay it out as root/{train,val}/{image,label}/<i>.npy")


def test_missing_data_prints_where_to_get_it_and_exits_nonzero(setup, monkeypatch, capsys):
    tmp_path, registry = setup
    monkeypatch.setitem(DATAMODULES, "needs_files", NeedsFiles)
    suite = tmp_path / "configs" / "toy.yaml"
    suite.write_text(SUITE.format(dataset="needs_files", data=tmp_path / "nowhere", out=tmp_path / "runs"))
    assert main(["table", "toy", "--tables", str(registry)]) == 1
    out = " ".join(capsys.readouterr().err.split())
    assert "table 'toy': the data of dataset 'needs_files'" in out and "https://example.org/toy" in out
    assert "root/{train,val}/{image,label}/<i>.npy" in out and not (tmp_path / "runs").exists()


def test_dry_run_shows_the_grid_and_a_stored_estimate_without_touching_data(setup, capsys, monkeypatch):
    tmp_path, registry = setup
    assert main(["table", "toy", "--tables", str(registry), "--dry-run", "--suite.stl", "true"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "grid: 10 runs (4 methods, 6 single-task) over seeds [0, 1]" in out
    assert "toy_protocol/synthetic_scenes/random-weights/seed1" in out
    assert "1 epochs x 13 steps (100 training inputs / batch 8" in out and "= 13 steps; 130 steps in all" in out
    assert "no stored step time for toy" in out and "--time-steps N" in out
    costs = tmp_path / "step_costs.yaml"
    costs.write_text("tables: {toy: {step_s: 36.0, device: cpu (2 threads), how: a test entry}}\n")
    monkeypatch.setattr(paper_tables, "STEP_COSTS_FILE", costs)
    assert main(["table", "toy", "--tables", str(registry), "--dry-run", "--suite.stl", "true"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "estimated cost: about 1.3 h on cpu (2 threads) (36.000 s per EW step" in out and "a test entry" in out
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_dry_run_times_real_steps_only_when_asked(setup, capsys):
    tmp_path, registry = setup
    assert main(["table", "toy", "--tables", str(registry), "--dry-run", "--time-steps", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "estimated cost: about" in out and "1 real step(s) of segnet timed here after one warm-up" in out


@pytest.mark.parametrize("name", sorted(load_registry()))
def test_every_shipped_table_dry_runs_at_once(name):
    """``table NAME --dry-run`` imports neither Lightning nor the datamodules (issue 17: under 5 s)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    code = (f"import sys; from benchmark.cli import main; assert main(['table', {name!r}, '--dry-run']) == 0; "
            "heavy = [m for m in ('lightning', 'datamodules', 'models') if m in sys.modules]; assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"table {name}:" in result.stdout and "steps in all" in result.stdout
