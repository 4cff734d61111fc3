"""CSO: connection strength-based optimization (Jeong & Yoon, "Quantifying Task Priority for Multi-Task
Optimization", CVPR 2024). Spec: ``docs/cso.md``.

The maths is in pure functions of tensors; the :class:`CSO` method drives whole training steps through
``own_step`` and needs a model with per-task BatchNorm after its shared convs (``task_bn: true``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from benchmark.methods.base import Method, StepContext
from benchmark.methods.hparams import choice
from benchmark.methods.registry import register

MODES = ("mixed", "phase1", "phase2", "sequential")
DRAWS = ("iteration", "epoch")
ORDERS = ("fixed", "shuffle")
DEGENERATE = ("sum", "project")
PAIRINGS = ("all", "name_rule")


def name_rule(model: nn.Module, connections: Sequence) -> list:
    """The connections the official code projects: the conv's name contains ``conv`` and the per-task BN is named
    like it with ``conv`` replaced by ``bn`` (``layer1.conv2`` -> ``layer1.bn2``); every other conv is summed.
    On timm's HRNet this keeps the block convs and drops the ``downsample``, ``transition`` and ``fuse`` ones."""
    names = {id(m): n for n, m in model.named_modules()}
    return [c for c in connections
            if "conv" in names[id(c.conv)] and names[id(c.conv)].replace("conv", "bn") == names[id(c.norm)]]


def connection_strength(weight: Tensor, gamma: Tensor, running_var: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-task strength ``S[k, p]`` of each output channel ``p`` of a conv (Eq. 4 and 6).

    ``S[k, p] = (sum_{q,m,n} W[p,q,m,n]^2) * gamma[k,p]^2 / (running_var[k,p] + eps)``, with ``weight``
    ``[O, I, kh, kw]`` and ``gamma``, ``running_var`` ``[K, O]``. Eq. 4's ``1/K^2`` cancels in Eq. 7 and is omitted.
    """
    per_channel = weight.detach().pow(2).flatten(1).sum(dim=1)
    return per_channel * gamma.detach().pow(2) / (running_var.detach() + eps)


def normalized_strength(strength: Tensor) -> Tensor:
    """Eq. 7: each task's strengths ``[K, O]`` divided by their sum over the layer's channels."""
    return strength / strength.sum(dim=1, keepdim=True)


def top_task(normalized: Tensor) -> Tensor:
    """Eq. 10: the top-priority task of each channel, ``argmax_k`` of ``[K, O]``; a tie goes to the lower index."""
    return normalized.argmax(dim=0)


def project_on_owners(grads: Tensor, owner: Tensor, degenerate: str = "sum") -> tuple[Tensor, int, int]:
    """Phase 2 of Algorithm 1 on one conv: ``grads`` ``[K, O, ...]`` are the per-task gradients of its weight.

    For each channel group ``C_i = {p : owner[p] = i}`` and each task ``j != i``, the flattened ``G[j, C_i]`` is
    projected onto the normal plane of ``G[i, C_i]`` when their dot product is negative; the owner's own
    gradient is never changed, so the result does not depend on the task order. A layer whose channels all have
    one owner is left alone with ``degenerate="sum"`` (the official code) or projected with ``"project"``
    (Algorithm 1 read literally). Returns the new gradients, the projections applied and the pairs tested.
    """
    if degenerate not in DEGENERATE:
        raise ValueError(f"degenerate={degenerate!r} is not one of {DEGENERATE}")
    owners = owner.unique().tolist()
    if len(owners) == 1 and degenerate == "sum":
        return grads, 0, 0
    num_tasks = grads.shape[0]
    flat = grads.reshape(num_tasks, grads.shape[1], -1).clone()
    fired = tested = 0
    for i in owners:
        group = owner == i
        ref = flat[i, group].reshape(-1)
        ref_sq = ref @ ref
        for j in range(num_tasks):
            if j == i:
                continue
            other = flat[j, group].reshape(-1)
            dot = ref @ other
            tested += 1
            if dot < 0:
                flat[j, group] = (other - (dot / ref_sq) * ref).view_as(flat[j, group])
                fired += 1
    return flat.view_as(grads), fired, tested


def phase1_mixed(draw: float, epoch: int, epochs: int) -> bool:
    """Algorithm 1's phase mix: Phase 1 when ``P >= e/E`` (``e`` from 0), so Pr(Phase 1) = 1 - e/E."""
    return draw >= epoch / epochs


@register("cso")
class CSO(Method):
    """Connection strength-based task priority (Jeong & Yoon, CVPR 2024, Algorithm 1).

    * Phase 1 (Eq. 9): one task-conditioned forward, backward and optimizer step per task on the same batch, in
      task order (``order="shuffle"`` permutes it per batch), gradients cleared to None between tasks.
    * Phase 2 (Eq. 10, Alg. 1): per-task gradients at the same parameters; on each paired conv the channels are
      grouped by top-priority task (Eq. 4, 6, 7) and conflicting gradients are projected off the owner's
      (:func:`project_on_owners`); every gradient is then summed and one optimizer step is taken.
    * ``mode``: ``mixed`` (Phase 1 when ``P >= e/E``, P drawn per ``draw``: iteration as the official code, or
      epoch as the paper's text), ``phase1``, ``phase2``, or ``sequential`` (Phase 1 for ``e < E/2``, then Phase 2).
    * ``weights``: the loss weights ``w_k`` applied in both phases (default all 1).
    * ``degenerate``: a paired conv whose channels all have one top task is plain-summed (``"sum"``, the official
      code, the default) or projected (``"project"``, Algorithm 1 read literally).
    * ``pairing``: which of the model's conv -> per-task BN connections are projected. ``"all"`` (default):
      every one, e.g. all 144 encoder convs of HRNet-W18-small-v2, including its downsample, transition and fuse
      convs, which the authors' code plain-sums; so on HRNet Phase 2 projects 60 more layers than the official
      code. ``"name_rule"``: the official pairing by name (:func:`name_rule`, 84 on HRNet); a model whose
      convs and BNs are not named ``*conv*`` / ``*bn*`` then has nothing to project, which is refused.
    * Priorities (Eq. 4-7) are read from the per-task BN ``running_var`` at the start of the step, before its
      K task-conditioned forward passes; the official code reads them after those passes, so its ``running_var``
      already holds this batch (momentum 0.1: a 10 % weight). We keep the start-of-step read: the priorities are
      then a function of the checkpointed state alone, the same for every task of the step and in both phases.
    * Gradient clipping (``train.clip_shared_grad_norm``) is not applied inside these steps; a suite that asks
      for it with CSO is refused at load time (``benchmark/config.py``).
    """

    def __init__(self, num_tasks: int, mode: str = "mixed", draw: str = "iteration", order: str = "fixed",
                 degenerate: str = "sum", weights: Sequence[float] | None = None, eps: float = 1e-5,
                 pairing: str = "all") -> None:
        super().__init__(num_tasks)
        for name, value, allowed in (("mode", mode, MODES), ("draw", draw, DRAWS), ("order", order, ORDERS),
                                     ("degenerate", degenerate, DEGENERATE), ("pairing", pairing, PAIRINGS)):
            choice(self, name, value, allowed)
        if weights is not None and (len(weights) != num_tasks or any(w < 0 for w in weights)):
            raise ValueError(f"CSO: weights={list(weights)} must be {num_tasks} non-negative numbers")
        self.mode, self.draw, self.order, self.degenerate, self.eps = mode, draw, order, degenerate, eps
        self.pairing = pairing
        self.weights = [1.0] * num_tasks if weights is None else [float(w) for w in weights]
        self._epoch_draw: tuple[int, float] | None = None

    def check_model(self, model: nn.Module) -> None:
        if not getattr(model, "connections", None) or not model.connections():
            raise ValueError(f"CSO needs per-task BatchNorm after the shared convs, but {type(model).__name__} has "
                             "no connections(); build the model with task_bn: true (a method's `model:` override)")
        if not self.paired(model):
            raise ValueError(f"CSO: pairing='name_rule' pairs none of the {len(model.connections())} connections of "
                             f"{type(model).__name__} (no conv named *conv* with its BN named *bn*); use pairing='all'")

    def paired(self, model: nn.Module) -> list:
        """The connections whose gradients Phase 2 projects (``pairing``); the others are summed."""
        return model.connections() if self.pairing == "all" else name_rule(model, model.connections())

    def use_phase1(self, epoch: int, epochs: int) -> bool:
        if self.mode in ("phase1", "phase2"):
            return self.mode == "phase1"
        if self.mode == "sequential":
            return epoch < epochs / 2
        if self.draw == "epoch":
            if self._epoch_draw is None or self._epoch_draw[0] != epoch:
                self._epoch_draw = (epoch, self._uniform())
            return phase1_mixed(self._epoch_draw[1], epoch, epochs)
        return phase1_mixed(self._uniform(), epoch, epochs)

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator()))

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "epoch_draw": self._epoch_draw}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self._epoch_draw = state["epoch_draw"]

    def priorities(self, model: nn.Module, task_names: Sequence[str]) -> dict[str, Tensor]:
        """The top-priority task of every output channel of every paired conv, by connection name."""
        owners = {}
        for c in self.paired(model):
            norms = [c.norm.norms[t] for t in task_names]
            gamma = torch.stack([n.weight if n.weight is not None else torch.ones_like(n.running_var) for n in norms])
            var = torch.stack([n.running_var for n in norms])
            owners[c.name] = top_task(normalized_strength(connection_strength(c.conv.weight, gamma, var, self.eps)))
        return owners

    def own_step(self, ctx: StepContext) -> bool:
        phase1 = self.use_phase1(ctx.epoch, ctx.epochs)
        owners = self.priorities(ctx.model, ctx.task_names)
        self.step_stats = {"phase1": float(phase1), **self._priority_stats(owners, ctx.task_names)}
        if phase1:
            self._phase1(ctx)
        else:
            self._phase2(ctx, owners)
        return True

    def _phase1(self, ctx: StepContext) -> None:
        if self.order == "fixed":
            order = range(self.num_tasks)
        else:
            order = torch.randperm(self.num_tasks, generator=self.generator()).tolist()
        for k in order:
            ctx.optimizer.zero_grad(set_to_none=True)
            loss = ctx.task_loss(ctx.task_names[k])
            if not ctx.finite(loss[None]):
                return
            ctx.backward(self.weights[k] * loss)
            ctx.optimizer.step()
            self.step_stats[f"loss_{ctx.task_names[k]}"] = float(loss.detach())

    def _phase2(self, ctx: StepContext, owners: dict[str, Tensor]) -> None:
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        per_task = []
        for k, name in enumerate(ctx.task_names):
            ctx.optimizer.zero_grad(set_to_none=True)
            loss = ctx.task_loss(name)
            if not ctx.finite(loss[None]):
                return
            ctx.backward(self.weights[k] * loss)
            per_task.append([p.grad for p in params])
            self.step_stats[f"loss_{name}"] = float(loss.detach())
        ctx.optimizer.zero_grad(set_to_none=True)
        index = {id(p): i for i, p in enumerate(params)}
        combined = [_sum_present([g[i] for g in per_task]) for i in range(len(params))]
        fired_all = tested_all = 0
        for c in self.paired(ctx.model):
            i = index[id(c.conv.weight)]
            grads = [g[i] for g in per_task]
            if any(g is None for g in grads):
                continue
            projected, fired, tested = project_on_owners(torch.stack(grads), owners[c.name], self.degenerate)
            combined[i] = projected.sum(dim=0)
            fired_all, tested_all = fired_all + fired, tested_all + tested
            if tested:
                self.step_stats[f"projection_rate/{c.name}"] = fired / tested
        if tested_all:
            self.step_stats["projection_rate"] = fired_all / tested_all
        for p, g in zip(params, combined):
            p.grad = g
        ctx.optimizer.step()

    @staticmethod
    def _priority_stats(owners: dict[str, Tensor], task_names: Sequence[str]) -> dict[str, float]:
        """Share of channels owned by each task, per layer and over all paired channels."""
        stats = {}
        everything = torch.cat(list(owners.values()))
        for k, task in enumerate(task_names):
            stats[f"priority/{task}"] = float((everything == k).float().mean())
            for name, owner in owners.items():
                stats[f"priority/{name}/{task}"] = float((owner == k).float().mean())
        return stats



def _sum_present(grads: list[Tensor | None]) -> Tensor | None:
    present = [g for g in grads if g is not None]
    return torch.stack(present).sum(dim=0) if present else None
