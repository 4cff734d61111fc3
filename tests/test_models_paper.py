"""The paper architectures: shapes, the shared/task split, per-task BN and its conv pairing, local checkpoints,
full-size parameter counts against the reference code, and one epoch of each through the runner."""

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from benchmark.methods import create
from models import MODELS
from models.backbones import conv_bn_pairs, load_checkpoint
from models.deeplab import DeepLabResNet
from models.hrnet import HRNetMTL
from models.segnet_mtan import SegNetMTAN, SegNetSplit
from models.task_norm import TaskBatchNorm2d

HEADS = {"semseg": 5, "depth": 1, "normal": 3}
NYU = {"semseg": 13, "depth": 1, "normal": 3}
SIZE = (32, 64)

TINY = {
    "segnet_split": (SegNetSplit, {"width": 4}, (4, 32, 64)),
    "segnet_mtan": (SegNetMTAN, {"width": 4}, (12, 32, 64)),
    "segnet_mtan_cagrad": (SegNetMTAN, {"width": 4, "attention_shared": False}, (12, 32, 64)),
    "deeplab": (DeepLabResNet, {"backbone": "resnet18", "aspp_channels": 8}, (512, 4, 8)),
    "hrnet": (HRNetMTL, {}, (270, 8, 16)),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These small models run far faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(key: str, **extra) -> nn.Module:
    torch.manual_seed(0)
    cls, params, _ = TINY[key]
    return cls(HEADS, **params, **extra)


def image(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(1))


def count(params) -> int:
    return sum(p.numel() for p in params)


@pytest.fixture(scope="module", params=[(k, tb) for k in TINY for tb in (False, True)], ids=lambda p: f"{p[0]}-{p[1]}")
def model(request):
    key, task_bn = request.param
    return key, build(key, task_bn=task_bn)


def test_registered_names():
    assert {"segnet_split", "segnet_mtan", "deeplab_resnet50", "hrnet18"} <= set(MODELS)


def test_shapes_of_z_and_of_every_head(model):
    key, m = model
    x = image()
    z = m.encode(x, "depth") if m.task_bn else m.encode(x)
    channels, h, w = TINY[key][2]
    if m.task_bn and key.startswith("segnet_mtan"):
        channels = 4
    assert tuple(z.shape) == (2, channels, h, w)
    out = m(x)
    assert {t: tuple(v.shape) for t, v in out.items()} == {t: (2, c, *SIZE) for t, c in HEADS.items()}
    with pytest.raises(ValueError, match="divisible"):
        m.encode(torch.randn(1, 3, 30, 64), "depth")


def test_parameter_split_is_a_partition_that_gradients_respect(model):
    """Disjoint and complete, and a task's loss reaches no parameter of another task."""
    key, m = model
    shared = {id(p) for p in m.shared_parameters()}
    per_task = {t: {id(p) for p in m.task_parameters(t)} for t in HEADS}
    sets = [shared, *per_task.values()]
    assert sum(map(len, sets)) == len(set().union(*sets)) == len(list(m.parameters()))
    m.zero_grad(set_to_none=True)
    x = image()
    m.head("depth", m.encode(x, "depth") if m.task_bn else m.encode(x)).square().mean().backward()
    for t in ("semseg", "normal"):
        assert all(p.grad is None or not p.grad.any() for p in m.task_parameters(t)), (key, t)
    assert any(p.grad is not None and p.grad.any() for p in m.task_parameters("depth"))
    m.zero_grad(set_to_none=True)


def test_mtan_attention_is_shared_or_task_specific_as_asked():
    for shared in (True, False):
        m = SegNetMTAN(HEADS, width=2, attention_shared=shared)
        attention = {id(p) for p in m.attention["depth"].parameters()}
        owner = m.shared_parameters() if shared else m.task_parameters("depth")
        assert attention <= {id(p) for p in owner}
        m.head("depth", m.encode(image())).sum().backward()
        assert all(p.grad is None or not p.grad.any() for p in m.attention["semseg"].parameters())
        assert all(p.grad is not None and p.grad.any() for p in m.attention["depth"].parameters())
    with pytest.raises(ValueError, match="attention_shared=False"):
        create("mgda_ub", 3).check_model(m)
    create("mgda_ub", 3).check_model(SegNetMTAN(HEADS, width=2))
    create("mgda_ub", 3, grad_source="params").check_model(m)


def test_mtan_representation_blocks_belong_to_one_task_each():
    """Representation mode: each task's loss has a gradient on its own block of z only."""
    m = build("segnet_mtan")
    z = m.encode(image()).detach().requires_grad_()
    for k, t in enumerate(HEADS):
        (g,) = torch.autograd.grad(m.head(t, z).sum(), z)
        block = torch.zeros(g.shape[1], dtype=torch.bool)
        block[4 * k:4 * (k + 1)] = True
        assert g[:, block].any() and not g[:, ~block].any()


@pytest.mark.parametrize("key", list(TINY))
def test_task_bn_conditions_the_encoder_on_the_task(key):
    """Changing one task's BN changes that task's representation and no other's."""
    m = build(key, task_bn=True).eval()
    x = image()
    with pytest.raises(ValueError, match="needs a task"):
        m.encode(x)
    before = {t: m.encode(x, t) for t in HEADS}
    if not key.startswith("segnet_mtan"):
        assert torch.equal(before["semseg"], before["depth"])
    norm = m.connections()[0].norm.norms["depth"]
    with torch.no_grad():
        norm.weight.mul_(3.0)
        norm.bias.add_(0.5)
    assert torch.equal(m.encode(x, "semseg"), before["semseg"])
    assert not torch.allclose(m.encode(x, "depth"), before["depth"])
    assert {id(p) for p in norm.parameters()} <= {id(q) for q in m.task_parameters("depth")}


@pytest.mark.parametrize("key", list(TINY))
def test_connections_pair_every_task_bn_with_the_conv_that_feeds_it(key):
    """Checked by running the model: each paired BN's input is the very tensor its conv produced."""
    m = build(key, task_bn=True)
    norms = [mod for mod in m.modules() if isinstance(mod, TaskBatchNorm2d)]
    conns = m.connections()
    assert sorted(map(id, norms)) == sorted(id(c.norm) for c in conns)
    assert len({c.name for c in conns}) == len({id(c.conv) for c in conns}) == len(conns)
    outputs, inputs = {}, {}
    hooks = [c.conv.register_forward_hook(lambda mod, i, o: outputs.__setitem__(id(mod), o)) for c in conns]
    hooks += [c.norm.register_forward_hook(lambda mod, i, o: inputs.__setitem__(id(mod), i[0])) for c in conns]
    m.encode(image(), "normal")
    for h in hooks:
        h.remove()
    for c in conns:
        assert inputs[id(c.norm)] is outputs[id(c.conv)], c.name
        assert m.get_submodule(c.name) is c.conv
    owners = create("cso", 3).priorities(m, list(HEADS))
    assert {n: len(o) for n, o in owners.items()} == {c.name: c.conv.out_channels for c in conns}


def test_conv_bn_pairs_of_a_timm_resnet_match_its_structure():
    net = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    pairs = conv_bn_pairs(net)
    assert pairs[0] == ("conv1", "bn1")
    assert ("layer2.0.downsample.0", "layer2.0.downsample.1") in pairs
    assert len(pairs) == sum(isinstance(mod, nn.BatchNorm2d) for mod in net.modules()) == 20
    assert all(c.replace("conv", "bn") == b for c, b in pairs if "downsample" not in c)

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x).relu())

    with pytest.raises(ValueError, match="'bn' of Skips does not follow a conv"):
        conv_bn_pairs(Skips())


def test_deeplab_encoder_is_dilated_with_output_stride_8():
    m = DeepLabResNet({"depth": 1})
    enc = m.encoder
    assert [b.conv2.dilation[0] for b in enc.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in enc.layer4] == [2, 4, 4]
    assert all(mod.stride == (1, 1) for mod in [*enc.layer3.modules(), *enc.layer4.modules()]
               if isinstance(mod, nn.Conv2d))
    assert count(m.shared_parameters()) == 23_508_032


def randomised(net: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in net.state_dict().items()}


def test_pretrained_weights_load_from_a_local_checkpoint_into_every_task_bn(tmp_path):
    state = randomised(timm.create_model("resnet18", pretrained=False))
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    m = DeepLabResNet(HEADS, backbone="resnet18", aspp_channels=8, pretrained_path=str(path), task_bn=True)
    assert torch.equal(m.encoder.conv1.weight, state["conv1.weight"])
    for t in HEADS:
        assert torch.equal(m.encoder.layer4[1].bn2.norms[t].running_var, state["layer4.1.bn2.running_var"])
        assert torch.equal(m.encoder.layer4[1].bn2.norms[t].weight, state["layer4.1.bn2.weight"])

    full = timm.create_model("hrnet_w18_small_v2", pretrained=False)
    hr_state = randomised(full)
    from safetensors.torch import save_file

    save_file(hr_state, str(tmp_path / "hrnet.safetensors"))
    hr = HRNetMTL(HEADS, pretrained_path=tmp_path / "hrnet.safetensors")
    assert torch.equal(hr.encoder.stage4[1].branches[3][1].conv2.weight,
                       hr_state["stage4.1.branches.3.1.conv2.weight"])


def test_bad_checkpoints_name_the_path_and_the_keys(tmp_path):
    net = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    state = net.state_dict()
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_checkpoint(net, tmp_path / "nowhere.pth")
    cases = {
        "missing keys \\(1\\): layer1.0.conv1.weight": {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"},
        "unexpected keys \\(1\\): head.weight": {**state, "head.weight": torch.zeros(2)},
        "shape mismatches .*conv1.weight \\(1, 3, 7, 7\\) vs \\(64, 3, 7, 7\\)":
            {**state, "conv1.weight": torch.zeros(1, 3, 7, 7)},
    }
    for i, (message, bad) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.pth"
        torch.save(bad, path)
        with pytest.raises(ValueError, match=f"bad{i}.pth' does not fit ResNet: {message}"):
            load_checkpoint(net, path)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": old}, tmp_path / "old.pth")
    load_checkpoint(net, tmp_path / "old.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth'.*not a readable"):
        load_checkpoint(net, tmp_path / "junk.pth")


def test_full_size_parameter_counts_match_the_reference_code():
    """Reference numbers, counted by instantiating each reference model:

    * nash-mtl ``experiments/nyuv2/models.py`` (c5176265): ``SegNetMtan`` 44,229,073 (44,117,184 shared: all but
      ``pred_task*``; the attention modules are 8,953,728), ``SegNetSplit`` standard 25,055,185, wide 43,934,161,
      deep 50,807,761;
    * LibMTL ``examples/nyu`` (43368048): ResNet-50 dilated 23,508,032 (= torchvision's 25,557,032 less the
      2,049,000 of ``fc``) + ``DeepLabHead`` 16,128,781 / 16,125,697 / 16,126,211 = 71,888,721.
    """
    mtan = SegNetMTAN(NYU)
    assert count(mtan.parameters()) == 44_229_073 and count(mtan.shared_parameters()) == 44_117_184
    assert count(p for t in NYU for p in mtan.attention[t].parameters()) == 8_953_728
    del mtan
    for variant, expected in (("standard", 25_055_185), ("wide", 43_934_161), ("deep", 50_807_761)):
        assert count(SegNetSplit(NYU, variant=variant).parameters()) == expected
    deeplab = DeepLabResNet(NYU)
    assert count(deeplab.parameters()) == 71_888_721
    assert [count(deeplab.task_parameters(t)) for t in NYU] == [16_128_781, 16_125_697, 16_126_211]


def test_hrnet18_parameter_count_is_the_small_v2_backbone_plus_the_heads():
    """HRNet-W18-small-v2 is 15.6M parameters as an ImageNet classifier (HRNet-Image-Classification README); the
    dense encoder drops the classification parts. Each head: 1x1 270->270 conv + BN + 1x1 270->C conv."""
    full = timm.create_model("hrnet_w18_small_v2", pretrained=False)
    classifier = count(p for n, p in full.named_parameters()
                       if n.startswith(("incre_modules", "downsamp_modules", "final_layer", "classifier")))
    assert round(count(full.parameters()) / 1e6, 1) == 15.6
    m = HRNetMTL(NYU)
    assert count(m.shared_parameters()) == count(full.parameters()) - classifier == 3_860_720
    assert [count(m.task_parameters(t)) for t in NYU] == [270 * 270 + 270 + 2 * 270 + 270 * c + c
                                                          for c in NYU.values()]


def test_task_bn_adds_only_bn_parameters_per_extra_task():
    plain, per_task = SegNetMTAN(HEADS, width=4), SegNetMTAN(HEADS, width=4, task_bn=True)
    bn = sum(2 * c.norm.norms["depth"].num_features for c in per_task.connections())
    assert count(per_task.parameters()) == count(plain.parameters()) + 2 * bn


SUITE = """
name: paper
dataset:
  name: synthetic_scenes
  params: {{height: 32, width: 64, n_train: 8, n_val: 4, n_test: 4, supersample: 1, generate_workers: 1,
            data_dir: {data}}}
model: {{name: {model}, params: {params}}}
train: {{epochs: 1, batch_size: 4, jacobian_mode: loop}}
methods: {methods}
seeds: [0]
stl: false
output_dir: {out}
leaderboard: {out}/leaderboard.md
"""

RUNS = {
    "segnet_split": ("{width: 4}", "[{name: ew}, {name: cso, model: {task_bn: true}}]"),
    "segnet_mtan": ("{width: 4}", "[{name: mgda_ub}, {name: pcgrad, model: {attention_shared: false}}]"),
    "deeplab_resnet50": ("{backbone: resnet18, aspp_channels: 8}", "[{name: cso, model: {task_bn: true}}]"),
    "hrnet18": ("{}", "[{name: imtl_h}]"),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_each_model_trains_one_epoch_through_the_runner(tmp_path: Path, name: str):
    from benchmark.config import load_suite
    from benchmark.records import read_record
    from benchmark.runner import run_suite

    params, methods = RUNS[name]
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(data=tmp_path / "data", out=tmp_path / "runs", model=name, params=params,
                                 methods=methods))
    run_suite(load_suite(path, []))
    records = [read_record(p) for p in sorted((tmp_path / "runs").rglob("seed*.json"))]
    assert len(records) == methods.count("name:")
    for rec in records:
        assert rec["model"]["name"] == name and rec["timing"]["steps"] == 2
        assert len(rec["epochs"]) == 1 and len(rec["epochs"][0]["test"]) == 10
