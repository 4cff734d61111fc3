"""Records intel-isl/MultiObjectiveOptimization's MultiMNIST MGDA-UB run for tests/test_reference_mgda_ub.py.

Contains no reference code: it imports the reference's ``multi_task/`` from ``--reference`` and runs its
``train_multi_task`` (the click command) with a ``configs.json`` whose only change is the MultiMNIST path. Shims,
all applied from outside, for PyTorch 0.4-era code on torch 2.x / CPU:

* ``.cuda()`` of tensors and modules returns them unchanged (device: CPU);
* ``x[0]`` of a 0-dim tensor returns ``x.item()`` (0.4's ``loss.data[0]``);
* ``torch.dot`` flattens its two arguments (0.4's ``dot`` of the ``B x 50`` representation gradients);
* ``scipy.misc.imresize`` is scipy 1.0's (``bytescale`` of the float canvas, then PIL's resize), removed since;
* ``six.moves.urllib.request.urlopen`` serves the fixture's ``*.gz`` files (the loader "downloads" MNIST and
  builds MultiMNIST with its own ``read_image_file``);
* ``tensorboardX.SummaryWriter`` records the scalars in memory (not installed here);
* ``NUM_EPOCHS`` (module constant, 100) is set to ``--epochs``.

Instrumentation (recording only): the sampler's index order, the dropout masks the reference draws, the
normalisers and the solver's weights, the Adam step's gradient and update norms and learning rate, and the
initial parameters, overwritten by ``tests.fixtures_mnist.uniform_recipe_`` keyed by the reference's names.

Usage: python record_mgda_ub_multimnist.py --reference <MultiObjectiveOptimization> [--reference-commit <sha>]
       --work <tmp> --out <dir>
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO))
from tests.fixtures_mnist import FILES, uniform_recipe_, write_mnist  # noqa: E402
from tests.reference_shims import install_legacy_tensor_shims  # noqa: E402

URLS = "http://yann.lecun.com/exdb/mnist/"


def install_shims(fixture: Path, scalars: list) -> None:
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    install_legacy_tensor_shims()

    import scipy.misc
    from PIL import Image

    def imresize(arr, size, interp="bilinear", mode=None):
        data = np.asarray(arr)
        assert data.ndim == 2 and mode is None
        cmin, cmax = data.min(), data.max()
        scale = 255.0 / ((cmax - cmin) or 1)
        byte = (((data - cmin) * scale).clip(0, 255) + 0.5).astype(np.uint8)
        resample = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "cubic": 3}[interp]
        return np.asarray(Image.fromarray(byte, mode="L").resize((size[1], size[0]), resample=resample))

    scipy.misc.imresize = imresize

    def urlopen(url):
        assert url.startswith(URLS), url
        return open(fixture / url.rpartition("/")[2], "rb")

    urllib = types.SimpleNamespace(request=types.SimpleNamespace(urlopen=urlopen))
    six = types.ModuleType("six")
    six.moves = types.ModuleType("six.moves")
    six.moves.urllib = urllib
    sys.modules["six"], sys.modules["six.moves"] = six, six.moves

    class SummaryWriter:
        def __init__(self, *args, **kwargs):
            pass

        def add_scalar(self, tag, value, step):
            scalars.append([tag, float(value), int(step)])

    sys.modules["tensorboardX"] = types.SimpleNamespace(SummaryWriter=SummaryWriter)


def packed(mask: torch.Tensor) -> str:
    bits = mask.detach().reshape(-1).to(torch.uint8).numpy()
    assert set(np.unique(bits)) <= {0, 1}
    return base64.b64encode(np.packbits(bits).tobytes()).decode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reference-commit", help="the snapshot's commit, when --reference is not a git work tree")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--n-test", type=int, default=250)
    ap.add_argument("--fixture-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--normalization", default="loss+")
    args = ap.parse_args()

    work = args.work.resolve()
    fixture = work / "fixture_gz"
    write_mnist(fixture, args.n_train, args.n_test, args.fixture_seed)
    mnist_root = work / "MultiMNIST"
    run_dir = work / "run"
    (run_dir / "saved_models").mkdir(parents=True, exist_ok=True)
    configs = json.loads((args.reference / "configs.json").read_text())
    configs["mnist"]["path"] = str(mnist_root)
    (run_dir / "configs.json").write_text(json.dumps(configs))
    params = {"optimizer": "Adam", "batch_size": args.batch_size, "lr": args.lr, "dataset": "mnist",
              "tasks": ["L", "R"], "normalization_type": args.normalization, "algorithm": "mgda",
              "use_approximation": True}
    (run_dir / "params.json").write_text(json.dumps(params))

    scalars: list = []
    install_shims(fixture, scalars)
    sys.path.insert(0, str(args.reference / "multi_task"))
    os.chdir(run_dir)
    np.random.seed(args.seed)  # noqa: NPY002 -- the reference loader draws from the legacy global RNG
    torch.manual_seed(args.seed)

    import loaders.multi_mnist_loader as mml
    import model_selector
    import models.multi_lenet as lenet
    import train_multi_task as tmt

    tmt.NUM_EPOCHS = args.epochs
    record: dict = {"partners": {}, "orders": {"train": [], "test": []}, "steps": [], "param_shapes": {}}
    state: dict = {}

    read_label_file = mml.read_label_file

    def read_label_file_rec(path, extension):
        record["partners"][Path(path).name] = [int(e) for e in extension]
        return read_label_file(path, extension)

    mml.read_label_file = read_label_file_rec

    sampler_iter = torch.utils.data.RandomSampler.__iter__

    def sampler_iter_rec(self):
        order = list(sampler_iter(self))
        record["orders"]["train" if self.data_source.train else "test"].append([int(i) for i in order])
        return iter(order)

    torch.utils.data.RandomSampler.__iter__ = sampler_iter_rec

    get_model = model_selector.get_model

    def get_model_rec(p):
        model = get_model(p)
        named = {f"{k}.{n}": q for k, m in model.items() for n, q in m.named_parameters()}
        uniform_recipe_(named)
        record["param_shapes"] = {n: list(q.shape) for n, q in named.items()}
        record["param_count"] = sum(q.numel() for q in named.values())
        record["buffer_names"] = [f"{k}.{n}" for k, m in model.items() for n, _ in m.named_buffers()]
        record["batchnorm_count"] = sum(isinstance(x, torch.nn.modules.batchnorm._BatchNorm)
                                        for m in model.values() for x in m.modules())
        record["initial_param_sums"] = {n: float(q.double().sum()) for n, q in named.items()}
        state["named"] = named
        state["shared"] = {id(q) for n, q in named.items() if n.startswith("rep.")}
        return model

    model_selector.get_model = get_model_rec

    def new_step() -> dict:
        step = {"head_masks": {}}
        record["steps"].append(step)
        return step

    rep_forward = lenet.MultiLeNetR.forward

    def rep_forward_rec(self, x, mask):
        out, new_mask = rep_forward(self, x, mask)
        if self.training and mask is None:
            step = new_step()
            channel = new_mask[0, :, 0, 0]
            assert torch.equal(new_mask, channel.view(1, -1, 1, 1).expand_as(new_mask))
            step["rep_mask"] = [int(v) for v in channel]
            step["input_sum"] = float(x.double().sum())
            step["batch"] = int(x.shape[0])
        return out, new_mask

    lenet.MultiLeNetR.forward = rep_forward_rec
    head_forward = lenet.MultiLeNetO.forward
    heads: dict = {}

    def head_forward_rec(self, x, mask):
        out, new_mask = head_forward(self, x, mask)
        if self.training and mask is None:
            record["steps"][-1]["head_masks"][heads[id(self)]] = packed(new_mask)
        return out, new_mask

    lenet.MultiLeNetO.forward = head_forward_rec

    normalizers = tmt.gradient_normalizers

    def normalizers_rec(grads, losses, kind):
        gn = normalizers(grads, losses, kind)
        step = record["steps"][-1]
        step["solver_losses"] = [float(losses[t]) for t in ("L", "R")]
        step["normalizers"] = [float(gn[t]) for t in ("L", "R")]
        step["rep_grad_norms"] = [math.sqrt(sum(float(g.double().square().sum()) for g in grads[t]))
                                  for t in ("L", "R")]
        return gn

    tmt.gradient_normalizers = normalizers_rec
    solve = tmt.MinNormSolver.find_min_norm_element

    def solve_rec(vecs):
        sol, cost = solve(vecs)
        record["steps"][-1]["weights"] = [float(v) for v in sol]
        record["steps"][-1]["min_norm"] = float(cost)
        return sol, cost

    tmt.MinNormSolver.find_min_norm_element = solve_rec
    adam_step = torch.optim.Adam.step

    def adam_step_rec(self, *a, **k):
        params = [p for g in self.param_groups for p in g["params"]]
        before = [p.detach().clone() for p in params]
        shared = state["shared"]
        step = record["steps"][-1]
        step["grad_norm_shared"] = math.sqrt(sum(float(p.grad.double().square().sum())
                                                 for p in params if id(p) in shared))
        step["grad_norm_heads"] = math.sqrt(sum(float(p.grad.double().square().sum())
                                                for p in params if id(p) not in shared))
        step["lr"] = float(self.param_groups[0]["lr"])
        out = adam_step(self, *a, **k)
        step["update_norm"] = math.sqrt(sum(float((p.detach().double() - b.double()).square().sum())
                                            for p, b in zip(params, before)))
        return out

    torch.optim.Adam.step = adam_step_rec

    init_o = lenet.MultiLeNetO.__init__

    def init_o_rec(self):
        init_o(self)
        heads[id(self)] = "LR"[len(heads)]

    lenet.MultiLeNetO.__init__ = init_o_rec

    tmt.train_multi_task.main(["--param_file", str(run_dir / "params.json")], standalone_mode=False)

    for i, step in enumerate(record["steps"]):
        step["losses"] = [v for tag, v, n in scalars for t in ("L", "R")
                          if tag == f"training_loss_{t}" and n == i + 1]
    epochs = []
    for e in range(args.epochs):
        n_iter = (e + 1) * math.ceil(args.n_train / args.batch_size)
        got = {tag: v for tag, v, n in scalars if n == n_iter and not tag.startswith("training")}
        epochs.append({"acc": [got["metric_acc_L"], got["metric_acc_R"]],
                       "val_loss": [got["validation_loss_L"], got["validation_loss_R"]]})
    record["epochs"] = epochs
    record["final_param_norms"] = {n: float(q.detach().double().norm()) for n, q in state["named"].items()}
    processed = {}
    for name in ("multi_training.pt", "multi_test.pt"):
        images, left, right = torch.load(mnist_root / "processed" / name)
        processed[name] = {"images_sha256": hashlib.sha256(images.numpy().astype(np.uint8).tobytes()).hexdigest(),
                           "images_dtype": str(images.dtype), "left": left.tolist()[:8], "right": right.tolist()[:8],
                           "labels_sha256": hashlib.sha256(np.stack([left.numpy(), right.numpy()]).astype(
                               np.int64).tobytes()).hexdigest()}
    record["processed"] = processed

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.reference, capture_output=True,
                            text=True).stdout.strip() or args.reference_commit
    if not commit:
        raise SystemExit(f"{args.reference} is not a git work tree: pass --reference-commit")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mgda_ub.json").write_text(json.dumps(record, separators=(",", ":")) + "\n")
    header = {
        "repository": "https://github.com/intel-isl/MultiObjectiveOptimization",
        "commit": commit,
        "entry_point": "multi_task/train_multi_task.py: the click command train_multi_task, run in-process with "
                       "cwd holding configs.json (the repository's, mnist.path -> the fixture) and params.json",
        "command": " ".join(["python", "tests/reference/mgda_ub_multimnist/driver/record_mgda_ub_multimnist.py",
                             "--reference <MultiObjectiveOptimization>", f"--reference-commit {commit}", "--work <tmp>",
                             "--out <this folder>"]
                            + [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                               if k not in ("reference", "reference_commit", "work", "out")]),
        "params_json": params,
        "methods": {"mgda_ub": {"steps": len(record["steps"]), "epochs": args.epochs,
                                "argv": ["train_multi_task.py", "--param_file", "params.json"]}},
        "driver": "tests/reference/mgda_ub_multimnist/driver/record_mgda_ub_multimnist.py (shims and "
                  "instrumentation in its docstring; no reference code)",
        "fixture": {"writer": "tests.fixtures_mnist.write_mnist",
                    "kwargs": {"n_train": args.n_train, "n_test": args.n_test, "seed": args.fixture_seed},
                    "sha256": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(fixture.iterdir())},
                    "files": [n for pair in FILES.values() for n in pair]},
        "initial_state": "after model_selector.get_model the parameters are overwritten by "
                         "tests.fixtures_mnist.uniform_recipe_ keyed by '<model key>.<parameter name>'",
        "seeds": {"numpy": args.seed, "torch": args.seed,
                  "note": "np.random.seed drives the loader's partner draws, torch.manual_seed the samplers and the "
                          "dropout masks (all recorded)"},
        "batch_order": "orders.train[e] / orders.test[e]: the RandomSampler permutation of epoch e (train batch "
                       f"{args.batch_size}, test batch 100, both shuffle=True as in datasets.py)",
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "numpy": np.__version__, "device": "cpu"},
    }
    (args.out / "header.json").write_text(json.dumps(header, indent=1) + "\n")
    print(f"{len(record['steps'])} steps, {len(epochs)} epochs -> {args.out}")


if __name__ == "__main__":
    main()
