"""timm backbones without downloads: weights only from a local checkpoint, and BatchNorm made per task for CSO."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import fx, nn

from models.task_norm import Connection, TaskBatchNorm2d

LISTED = 8


def create_backbone(name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``: never a download (use ``load_checkpoint``)."""
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        raise ValueError(f"timm backbone {name!r}: {exc}") from exc


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: ``.safetensors``, or a ``torch.save`` file holding the state dict itself or a
    dict with a ``state_dict`` entry (a training checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_path {str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"pretrained_path {str(path)!r}: not a readable torch checkpoint: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained_path {str(path)!r}: expected a dict of tensors (a state_dict)")
    return state


def _listed(keys: Sequence[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > LISTED else ""
    return ", ".join(keys[:LISTED]) + more


def load_checkpoint(module: nn.Module, path: str | Path, ignore_prefixes: Sequence[str] = ()) -> None:
    """Load the local checkpoint ``path`` into ``module``, every key accounted for.

    Keys starting with one of ``ignore_prefixes`` (the ImageNet classifier that a dense model drops) are skipped;
    a missing ``num_batches_tracked`` counter keeps the module's value (older checkpoints have none). Any other
    missing or unexpected key, or a shape mismatch, raises a ``ValueError`` that names the path and the keys.
    """
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(tuple(ignore_prefixes))}
    expected = module.state_dict()
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                    for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    problems = [f"{label} ({len(keys)}): {_listed(keys)}"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches (checkpoint vs model)", shapes)) if keys]
    if problems:
        raise ValueError(f"pretrained_path {str(path)!r} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict({**expected, **state}, strict=True)


def conv_bn_pairs(root: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` module names for every ``BatchNorm2d`` of ``root``, in forward order, found by tracing
    ``root`` with ``torch.fx``: each BN must be called once, directly on the output of a ``Conv2d``."""
    modules = dict(root.named_modules())
    try:
        graph = fx.symbolic_trace(root).graph
    except Exception as exc:
        raise ValueError(f"task_bn: cannot trace {type(root).__name__} with torch.fx to pair convs and BNs: "
                         f"{exc}") from exc
    pairs, seen_bn, seen_conv = [], set(), set()
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0]
        conv = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"task_bn: BatchNorm {node.target!r} of {type(root).__name__} does not follow a conv")
        if node.target in seen_bn or src.target in seen_conv:
            raise ValueError(f"task_bn: {node.target!r} / {src.target!r} is used twice; a conv-BN pair must be unique")
        if conv.out_channels != modules[node.target].num_features:
            raise ValueError(f"task_bn: {src.target!r} has {conv.out_channels} channels, {node.target!r} expects "
                             f"{modules[node.target].num_features}")
        seen_bn.add(node.target)
        seen_conv.add(src.target)
        pairs.append((src.target, node.target))
    unused = sorted(n for n, m in modules.items() if isinstance(m, nn.BatchNorm2d) and n not in seen_bn)
    if unused:
        raise ValueError(f"task_bn: BatchNorms never called in {type(root).__name__}.forward: {_listed(unused)}")
    return pairs


def task_batchnorm(bn: nn.BatchNorm2d, tasks: Sequence[str]) -> TaskBatchNorm2d:
    """A ``TaskBatchNorm2d`` whose every task starts as a copy of ``bn`` (its affine parameters and statistics)."""
    out = TaskBatchNorm2d(bn.num_features, tasks)
    for norm in out.norms.values():
        norm.eps, norm.momentum = bn.eps, bn.momentum
        norm.load_state_dict(bn.state_dict())
    return out.to(bn.weight.device if bn.weight is not None else bn.running_mean.device)


def convert_to_task_bn(root: nn.Module, tasks: Sequence[str], prefix: str = "") -> list[Connection]:
    """Swap every ``BatchNorm2d`` of ``root`` for a per-task copy (CSO, Jeong & Yoon, CVPR 2024, §4.2) and return
    the conv-to-BN connections, named ``prefix + conv name``, in forward order."""
    pairs = conv_bn_pairs(root)
    connections = []
    for conv_name, bn_name in pairs:
        parent_name, _, attr = bn_name.rpartition(".")
        parent = root.get_submodule(parent_name)
        norm = task_batchnorm(getattr(parent, attr), tasks)
        setattr(parent, attr, norm)
        connections.append(Connection(prefix + conv_name, root.get_submodule(conv_name), norm))
    return connections
