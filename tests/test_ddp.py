"""Under 2-rank Lightning DDP (gloo, CPU) every method's step equals one process's step on the global batch."""

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from benchmark.methods import Needs, get
from tests import ddp_harness as H

VARIANTS = H.variants()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory):
    """Both ranks' models after one step of every variant (forked, so the ranks skip the imports)."""
    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(H.worker, args=(_free_port(), str(out)), nprocs=2, start_method="fork", join=False)
    deadline = time.monotonic() + 300
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the DDP workers did not finish within 300 s")
    return out


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(out, label: str) -> list[dict]:
    return [torch.load(out / f"{label}.rank{r}.pt") for r in range(2)]


def test_variants_cover_every_gradient_method_and_both_cso_phases():
    gradient = {v.name for v in VARIANTS.values() if get(v.name).needs is not Needs.LOSSES}
    assert {"mgda_ub", "pcgrad", "cagrad", "nash_mtl", "graddrop"} <= gradient
    assert {"cso@phase1", "cso@phase2", "ew"} <= set(VARIANTS)


@pytest.mark.parametrize("label", list(VARIANTS))
def test_ddp_step_equals_the_global_batch_step(label, ddp_out, one_thread):
    variant = VARIANTS[label]
    ref = H.params(H.train(variant, H.global_batch(), devices=1))
    torch.manual_seed(0)
    init = H.FrozenBNSegNet({"semseg": 3, "depth": 1, "normal": 3}, width=2, levels=1,
                            task_bn=variant.name == "cso").state_dict()
    rank0, rank1 = (r["params"] for r in load(ddp_out, label))
    assert max(float((ref[k] - init[k]).abs().max()) for k in ref if ref[k].is_floating_point()) > 1e-3
    for key in ref:
        assert torch.equal(rank0[key], rank1[key]), f"{label}: ranks differ on {key}"
        torch.testing.assert_close(rank0[key], ref[key], atol=1e-5, rtol=0, msg=f"{label}: {key}")


def test_communication_volume_matches_the_docs(ddp_out):
    """The bytes the engine all-reduces per step, against docs/ddp.md's table (T=3, float32 unless noted)."""
    torch.manual_seed(0)
    model = H.FrozenBNSegNet({"semseg": 3, "depth": 1, "normal": 3}, width=2, levels=1)
    tasks = [t.name for t in H.TASKS]
    t, p = len(tasks), sum(q.numel() for q in model.shared_parameters())
    h = sum(q.numel() for n in tasks for q in model.task_parameters(n))
    n = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    f = 2 * H.SIZE * H.SIZE
    expected = {"ew": t + n, "famo": 2 * t + n, "mgda": t + t * p + h + n, "mgda_ub": t + 2 * t * t + p + h + n,
                "mgda@rep_batchsum": t + t * f + p + h + n,
                "graddrop@rep_full": t + t * H.LOCAL_BATCH * f + p + h + n + 2 * 2 * 2}
    for label, elements in expected.items():
        assert load(ddp_out, label)[0]["bytes"] == 4 * elements, label
    cso = H.FrozenBNSegNet({"semseg": 3, "depth": 1, "normal": 3}, width=2, levels=1, task_bn=True)
    cso_p = sum(q.numel() for q in cso.shared_parameters())
    cso_n = sum(b.numel() for b in cso.buffers() if b.is_floating_point())
    per_task = sum(cso_p + sum(q.numel() for q in cso.task_parameters(k)) for k in tasks)
    assert load(ddp_out, "cso@phase2")[0]["bytes"] == 4 * (t + per_task + cso_n)
