"""The image-level task kinds: head sizes, losses, metrics against independent computations, batch checks."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_f1_score, multiclass_accuracy

from benchmark import tasks
from datamodules.task_spec import TaskSpec
from models import MODELS

CLS = TaskSpec("left", "classification", num_classes=4)
BIN = TaskSpec("Smiling", "binary")


def test_task_spec_kinds_and_head_channels():
    assert tasks.head_channels(CLS) == 4 and tasks.head_channels(BIN) == 1
    assert [i.key for i in tasks.metric_infos(CLS)] == ["acc"]
    assert tasks.metric_directions([CLS, BIN]) == {"left/acc": "higher", "Smiling/error": "lower",
                                                   "Smiling/f1": "higher"}
    with pytest.raises(ValueError, match="classification needs num_classes >= 2, got None"):
        tasks.check_specs([TaskSpec("x", "classification")])


def test_classification_loss_is_mean_cross_entropy_over_labelled_images():
    raw = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0]], requires_grad=True)
    target = torch.tensor([0, -1, 2])
    loss = tasks.task_loss(CLS, raw, target)
    by_hand = [-(2.0 - math.log(math.exp(2) + 1 + math.exp(-1) + math.exp(0.5))), math.log(4.0)]
    assert loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    empty = tasks.task_loss(CLS, raw, torch.full((3,), -1))
    empty.backward()
    assert empty.item() == 0.0 and raw.grad is not None


def test_binary_loss_is_mean_bce_with_logits():
    raw = torch.tensor([[0.3], [-2.0], [1.5]])
    target = torch.tensor([1.0, 0.0, 0.0])
    sig = [1 / (1 + math.exp(-v)) for v in (0.3, -2.0, 1.5)]
    by_hand = -(math.log(sig[0]) + math.log(1 - sig[1]) + math.log(1 - sig[2])) / 3
    assert tasks.task_loss(BIN, raw, target).item() == pytest.approx(by_hand, rel=1e-6)
    assert tasks.task_loss(BIN, raw, target.long()).item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize(("spec", "raw"), [(CLS, torch.zeros(3, 5)), (CLS, torch.zeros(3)), (BIN, torch.zeros(3))])
def test_loss_rejects_mismatched_prediction(spec, raw):
    target = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"task '{spec.name}': prediction shape .* does not match the expected"):
        tasks.task_loss(spec, raw, target)


def test_accuracy_matches_torchmetrics_over_batches():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)
    metric = tasks.make_metric(CLS)
    for lo in range(0, 50, 16):
        metric.update(logits[lo:lo + 16], target[lo:lo + 16])
    expected = multiclass_accuracy(logits, target, num_classes=4, average="micro")
    assert metric.compute()["acc"].item() == pytest.approx(100 * expected.item(), rel=1e-6)
    assert {fx.__name__ for fx in metric._reductions.values()} == {"dim_zero_sum"}


def test_accuracy_skips_ignored_labels_and_is_nan_when_empty():
    metric = tasks.make_metric(CLS)
    metric.update(torch.tensor([1, 2, 3, 0]), torch.tensor([1, -1, 0, 0]))
    assert metric.compute()["acc"].item() == pytest.approx(100 * 2 / 3)
    empty = tasks.make_metric(CLS)
    empty.update(torch.tensor([1]), torch.tensor([-1]))
    assert math.isnan(empty.compute()["acc"].item())


def test_binary_metric_matches_numpy_and_torchmetrics():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(64, 1, generator=g), torch.randint(0, 2, (64,), generator=g).float()
    metric = tasks.make_metric(BIN)
    metric.update(logits[:40], target[:40])
    metric.update(logits[40:], target[40:])
    out = metric.compute()
    p, t = logits[:, 0].numpy() > 0, target.numpy() == 1
    tp, fp, fn = np.sum(p & t), np.sum(p & ~t), np.sum(~p & t)
    assert out["error"].item() == pytest.approx(100 * np.mean(p != t), rel=1e-6)
    assert out["f1"].item() == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn), rel=1e-6)
    expected = binary_f1_score(torch.sigmoid(logits[:, 0]), target.long())
    assert out["f1"].item() == pytest.approx(100 * expected.item(), rel=1e-6)


def test_binary_f1_zero_division_and_threshold():
    metric = tasks.make_metric(BIN)
    metric.update(torch.tensor([-1.0, -3.0]), torch.tensor([0, 0]))
    out = metric.compute()
    assert out["error"].item() == 0.0 and out["f1"].item() == 0.0
    metric = tasks.make_metric(BIN)
    metric.update(torch.tensor([0.0, 1e-6]), torch.tensor([1, 1]))  # logit 0 is sigmoid 0.5, not above 0.5
    assert metric.compute()["f1"].item() == pytest.approx(100 * 2 / 3)
    with pytest.warns(UserWarning, match="before the ``update`` method"):
        assert math.isnan(tasks.make_metric(BIN).compute()["error"].item())


def _batch(b: int = 4) -> dict:
    return {"image": torch.rand(b, 1, 28, 28),
            "targets": {"left": torch.tensor([0, 3, -1, 2])[:b], "Smiling": torch.tensor([0.0, 1.0, 1.0, 0.0])[:b]}}


def test_validate_batch_accepts_one_channel_images_and_image_targets():
    tasks.validate_batch([CLS, BIN], _batch())
    batch = _batch()
    batch["targets"]["Smiling"] = batch["targets"]["Smiling"].long()
    tasks.validate_batch([CLS, BIN], batch)
    batch["image"] = torch.rand(4, 5, 8, 8)
    tasks.validate_batch([CLS, BIN], batch)


@pytest.mark.parametrize(("task", "value", "message"), [
    ("left", torch.tensor([0, 1, 2, 4]), r"task 'left': target label 4 is outside the expected \[0, 4\)"),
    ("left", torch.tensor([0, 1, 2, 3], dtype=torch.int32), r"task 'left': target dtype torch.int32 .* torch.int64"),
    ("left", torch.zeros(4, 1, dtype=torch.long), r"task 'left': target shape \(4, 1\) .* \(B,\) = \(4,\)"),
    ("Smiling", torch.tensor([0.0, 1.0, 0.5, 0.0]), r"task 'Smiling': binary target value 0.5 is not 0 or 1"),
    ("Smiling", torch.tensor([0, 1, -1, 0]), r"task 'Smiling': binary target value -1.0 is not 0 or 1"),
    ("Smiling", torch.tensor([True, False, True, True]), r"task 'Smiling': target dtype torch.bool"),
])
def test_validate_batch_rejects_bad_image_targets(task, value, message):
    batch = _batch()
    batch["targets"][task] = value
    with pytest.raises(ValueError, match=message):
        tasks.validate_batch([CLS, BIN], batch)


def test_validate_batch_still_rejects_non_4d_images():
    batch = _batch()
    batch["image"] = torch.rand(4, 28, 28)
    with pytest.raises(ValueError, match=r"batch 'image': expected a float tensor of shape \(B, C, H, W\)"):
        tasks.validate_batch([CLS], batch)


# ----------------------------------------------------------------------------- models


def _check_parameter_split(model, tasks_):
    shared = {id(p) for p in model.shared_parameters()}
    own = [{id(p) for p in model.task_parameters(t)} for t in tasks_]
    assert all(not (shared & o) for o in own) and not (own[0] & own[1])
    assert shared.union(*own) == {id(p) for p in model.parameters()}


def test_multilenet_matches_the_paper_sizes():
    model = MODELS["lenet"]({"left": 10, "right": 10})
    shared = sum(p.numel() for p in model.shared_parameters())
    assert shared == (25 * 10 + 10) + (250 * 20 + 20) + (320 * 50 + 50)
    assert sum(p.numel() for p in model.task_parameters("left")) == (50 * 50 + 50) + (50 * 10 + 10)
    _check_parameter_split(model, ["left", "right"])
    model.eval()
    out = model(torch.randn(3, 1, 28, 28))
    assert out["left"].shape == (3, 10) and model.encode(torch.randn(3, 1, 28, 28)).shape == (3, 50)
    with pytest.raises(ValueError, match=r"MultiLeNet: image size \(32, 32\) differs from image_size=28"):
        model.encode(torch.randn(1, 1, 32, 32))


def test_multilenet_channel_dropout_is_shared_by_the_tasks():
    """One dropout mask on z: a task sees the same representation as the other in the same forward pass."""
    model = MODELS["lenet"]({"left": 10, "right": 10})
    model.train()
    torch.manual_seed(0)
    z = model.encode(torch.randn(4, 1, 28, 28))
    dropped = model.encoder[4]
    assert isinstance(dropped, torch.nn.Dropout2d) and dropped.p == 0.5
    assert z.shape == (4, 50)


def test_resnet_cls_cifar_stem_heads_and_checkpoint(tmp_path):
    model = MODELS["resnet18_cls"]({"a": 2, "b": 1})
    assert model.encoder.conv1.kernel_size == (3, 3) and model.encoder.conv1.stride == (1, 1)
    assert isinstance(model.encoder.maxpool, torch.nn.Identity)
    _check_parameter_split(model, ["a", "b"])
    model.eval()
    out = model(torch.randn(2, 3, 16, 16))
    assert out["a"].shape == (2, 2) and out["b"].shape == (2, 1)
    state = {**model.encoder.state_dict(), "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    torch.save({"state_dict": state}, tmp_path / "ok.pt")
    loaded = MODELS["resnet18_cls"]({"a": 2}, checkpoint=str(tmp_path / "ok.pt"))
    for (name, p), q in zip(model.encoder.state_dict().items(), loaded.encoder.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    with pytest.raises(ValueError, match=r"checkpoint .*ok.pt does not fit the encoder: .*conv1.weight: "
                                         r"\(64, 3, 3, 3\) in the file, \(64, 3, 7, 7\) in the model.*cifar_stem"):
        MODELS["resnet18_cls"]({"a": 2}, cifar_stem=False, checkpoint=str(tmp_path / "ok.pt"))
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*absent.pt \(model.params.checkpoint\) does not exist"):
        MODELS["resnet18_cls"]({"a": 2}, checkpoint=str(tmp_path / "absent.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"checkpoint .*junk.pt is not a readable torch state dict"):
        MODELS["resnet18_cls"]({"a": 2}, checkpoint=str(tmp_path / "junk.pt"))
    del state["layer1.0.bn1.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"missing \['layer1.0.bn1.weight'\]"):
        MODELS["resnet18_cls"]({"a": 2}, checkpoint=str(tmp_path / "partial.pt"))


def test_famo_cnn_layout():
    model = MODELS["famo_cnn"]({"a": 1, "b": 1}, width=4)
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in model.encoder if isinstance(m, torch.nn.MaxPool2d)]
    assert [c.out_channels for c in convs] == [4, 8, 8, 16, 16, 32, 32] and len(pools) == 3
    linears = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features, lin.bias) for lin in linears] == [(32, 32, None), (32, 32, None)]
    _check_parameter_split(model, ["a", "b"])
    model.eval()
    assert model(torch.rand(2, 3, 64, 64))["a"].shape == (2, 1)
