"""The single place that touches autograd: computes what a method needs, and writes the update into ``.grad``.

Per-task gradients of the shared parameters come from one of two paths:

* ``loop``: T calls of ``torch.autograd.grad`` on a retained graph;
* ``batched``: one ``torch.autograd.grad(..., is_grads_batched=True)`` call (vmap over the T unit vectors).

Which is faster depends on the device and the model (on 2 CPU cores the loop is faster; on a GPU the batched
pass usually is), so ``jacobian_mode="auto"`` times both once per device and parameter count, keeps the
faster, and the run record names the choice.

Under DDP (``sync`` given) the engine reduces across ranks what the method reads before it aggregates, so every
rank applies the update a single process would compute on the concatenated global batch (``docs/ddp.md``).
Under fp16 autocast (``scale`` > 1) the per-task gradients come from the scaled losses and are unscaled to
float32 before the method sees them; a non-finite one turns the step into one the GradScaler skips.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.distributed import GradSync
from benchmark.methods.base import Method, Needs

JACOBIAN_MODES = ("auto", "loop", "batched")
AUTO_MARGIN = 0.9
_AUTO_CHOICE: dict[tuple[str, int, int], str] = {}


def flat_grads(grads: Sequence[Tensor | None], params: Sequence[Tensor], lead: tuple[int, ...] = ()) -> Tensor:
    """Concatenate (possibly ``None``) gradients into one ``[*lead, P]`` tensor, on the parameters' device."""
    return torch.cat(
        [
            (torch.zeros(*lead, p.numel(), dtype=p.dtype, device=p.device) if g is None else g.reshape(*lead, -1))
            for g, p in zip(grads, params, strict=True)
        ],
        dim=-1,
    )


def jacobian_loop(losses: Tensor, inputs: Sequence[Tensor]) -> Tensor:
    grads = (torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True) for loss in losses)
    return torch.stack([flat_grads(g, inputs) for g in grads])


def jacobian_batched(losses: Tensor, inputs: Sequence[Tensor]) -> Tensor:
    eye = torch.eye(len(losses), dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(losses, inputs, grad_outputs=eye, retain_graph=True, allow_unused=True,
                                is_grads_batched=True)
    return flat_grads(grads, inputs, lead=(len(losses),))


def _timed(fn: Callable[[], Tensor], device: torch.device) -> tuple[Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def jacobian(losses: Tensor, inputs: Sequence[Tensor], mode: str) -> tuple[Tensor, str]:
    """The ``[T, P]`` Jacobian of ``losses`` w.r.t. ``inputs`` and the path that computed it."""
    if mode == "loop":
        return jacobian_loop(losses, inputs), "loop"
    if mode == "batched":
        return jacobian_batched(losses, inputs), "batched"
    key = (inputs[0].device.type, len(losses), sum(p.numel() for p in inputs))
    if key not in _AUTO_CHOICE:
        timings = {}
        for path, fn in (("loop", jacobian_loop), ("batched", jacobian_batched)):
            timings[path] = min(_timed(lambda f=fn: f(losses, inputs), inputs[0].device)[1] for _ in range(2))
        _AUTO_CHOICE[key] = "batched" if timings["batched"] < AUTO_MARGIN * timings["loop"] else "loop"
    return jacobian(losses, inputs, _AUTO_CHOICE[key])


def write_grads(params: Sequence[nn.Parameter], direction: Tensor) -> None:
    """Set ``p.grad`` from the flat ``direction`` (overwriting; the engine owns the shared gradients)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = direction[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


@dataclass
class StepInfo:
    """What one engine step did, for logging: the loss weights used and the update norm."""

    weights: Tensor
    update_norm: float
    jacobian_mode: str | None = None
    finite: bool = True
    """False if the scaled per-task gradients overflowed: the shared gradients are then inf and the scaler skips."""


@dataclass
class Probe:
    """The Gramian ``[T, T]`` (float64) of the per-task gradients of the shared parameters, taken for logging;
    ``source``: ``engine`` (the step's own Jacobian) or ``extra`` (computed for the probe, ``seconds`` long)."""

    gramian: Tensor
    seconds: float
    source: str


class Engine:
    """Computes exactly what ``method.needs`` and writes the gradients of one training step.

    ``shared``: the shared parameters (the encoder). ``task_params``: everything else that is trained by the
    task losses (heads) plus the method's own parameters. In representation mode, ``z`` is the encoder
    output and ``z_in`` the detached leaf the heads were evaluated on.

    ``sync``: the reductions across DDP ranks (None: one process). The losses passed to :meth:`step` must then
    carry the global value (their gradient stays local), and a ``Needs.LOSSES`` step relies on ``backward``
    (Lightning's strategy backward: DDP's own all-reduce and the precision hooks). The engine's own state (its
    step count, the resolved Jacobian path and the method's ``last_weights``, which only the engine writes)
    round-trips through :meth:`state_dict`.
    """

    def __init__(self, method: Method, shared: Sequence[nn.Parameter], heads: Sequence[nn.Parameter],
                 jacobian_mode: str = "auto", backward: Callable[[Tensor], None] | None = None,
                 update_every: int = 1, sync: GradSync | None = None) -> None:
        if jacobian_mode not in JACOBIAN_MODES:
            raise ValueError(f"jacobian_mode={jacobian_mode!r} is not one of {JACOBIAN_MODES}")
        if not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be an int >= 1, got {update_every!r}")
        if update_every > 1 and method.needs is not Needs.GRAMIAN:
            raise ValueError(f"update_every={update_every} amortises Gramian methods only; "
                             f"{type(method).__name__} needs {method.needs.value}")
        self.update_every = update_every
        self.steps = 0
        self.method = method
        self.shared = list(shared)
        self.heads = list(heads)
        self.method_params = [p for p in method.parameters() if p.requires_grad]
        self.jacobian_mode = jacobian_mode
        self.backward = backward or (lambda loss: loss.backward())
        self.resolved_mode: str | None = None
        self.sync = sync
        self.last_probe: Probe | None = None
        self._probing = False

    @property
    def uses_rep(self) -> bool:
        return self.method.grad_source != "params"

    def state_dict(self) -> dict:
        return {"engine_steps": self.steps, "jacobian_mode": self.resolved_mode,
                "last_weights": self.method.last_weights}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.resolved_mode = state["engine_steps"], state["jacobian_mode"]
        self.method.last_weights = state["last_weights"]

    def step(self, losses: Tensor, z: Tensor | None = None, z_in: Tensor | None = None,
             probe: bool = False, scale: float = 1.0) -> StepInfo:
        """Back-propagate the (already transformed) task losses ``[T]`` as the method prescribes; ``scale``: the
        GradScaler's current scale (fp16 autocast), by which every gradient the engine writes is multiplied.

        With ``probe``, also leave in ``last_probe`` the Gramian of the per-task gradients of the shared
        parameters: the step's own (global under DDP) when it computes one there, else from extra backward
        passes before the step (this rank's batch).
        """
        with torch.autocast(losses.device.type, enabled=False):
            return self._step(losses, z, z_in, probe, scale)

    def _step(self, losses: Tensor, z: Tensor | None, z_in: Tensor | None, probe: bool, scale: float) -> StepInfo:
        method = self.method
        self.last_probe, self._probing = None, probe
        reuses = method.last_weights is not None and self.steps % self.update_every != 0
        if probe and (method.needs is Needs.LOSSES or self.uses_rep or reuses):
            start = _sync(losses.device)
            gramian = self.param_gramian(losses, z, z_in)
            self.last_probe = Probe(gramian, _sync(losses.device) - start, "extra")
        if method.needs is Needs.LOSSES:
            weights = checked(method, "loss_weights", method.loss_weights(losses.detach()), (len(losses),))
            total = (weights.detach() * losses).sum()
            self.backward(total)
            return StepInfo(weights.detach(), _grad_norm(self.shared) / scale)
        if self.uses_rep and (z is None or z_in is None):
            raise ValueError(f"{type(method).__name__} uses grad_source={method.grad_source!r}: pass z and z_in")
        reuse = self.steps % self.update_every != 0 and method.last_weights is not None
        self.steps += 1
        if reuse:
            return self._reuse_weights(losses, z, z_in, scale)
        combined = self._combine(losses, [z_in] if self.uses_rep else self.shared, scale, rep=z_in)
        if combined is None:
            for p in self.shared:
                p.grad = torch.full_like(p, float("inf"))
            return StepInfo(torch.ones_like(losses.detach()), float("inf"), self.resolved_mode, finite=False)
        weights, direction, mode = combined
        if self.uses_rep:
            torch.autograd.backward(z, grad_tensors=(scale * direction).view_as(z).to(z.dtype))
            self._mean_grads(self.shared)
        else:
            write_grads(self.shared, scale * direction)
        self._backward_heads(losses, weights, scale)
        return StepInfo(weights, float(direction.norm()), mode)

    def _reuse_weights(self, losses: Tensor, z: Tensor | None, z_in: Tensor | None, scale: float) -> StepInfo:
        """An amortised step (``update_every > 1``): the last weights, one backward pass, no Jacobian.

        The method is not consulted, so its state does not advance on these steps (as in Nash-MTL's paper).
        """
        weights = self.method.last_weights.to(losses)
        total = scale * (weights * losses).sum()
        if self.uses_rep:
            (grad_z,) = torch.autograd.grad(total, z_in, retain_graph=True)
            torch.autograd.backward(z, grad_tensors=grad_z)
        else:
            torch.autograd.backward(total, inputs=self.shared, retain_graph=True)
        self._mean_grads(self.shared)
        self._backward_heads(losses, weights, scale)
        return StepInfo(weights.detach(), _grad_norm(self.shared) / scale, "reused")

    def _combine(self, losses: Tensor, inputs: list[Tensor], scale: float = 1.0,
                 rep: Tensor | None = None) -> tuple[Tensor, Tensor, str] | None:
        """Per-task gradients of ``inputs`` combined by the method: (weights, direction, jacobian path), or None if
        the scaled gradients overflowed. In rep mode the direction is this rank's slice."""
        method = self.method
        jac, mode = jacobian(losses if scale == 1 else scale * losses, inputs, self.jacobian_mode)
        self.resolved_mode = mode
        if jac.dtype in (torch.float16, torch.bfloat16):
            jac = jac.float()
        if scale != 1:
            jac = jac / scale
        if self.sync is not None and method.grad_source == "params":
            jac = self.sync.mean(jac)
        if self._probing and self.last_probe is None:
            start = _sync(jac.device)
            j64 = jac.detach().double()
            self.last_probe = Probe(j64 @ j64.T, _sync(jac.device) - start, "engine")
        if method.needs is Needs.GRAMIAN:
            gramian = self._gramian(jac, rep)
            if scale != 1 and not torch.isfinite(gramian).all():
                return None
            weights = checked(method, "gramian_weights", method.gramian_weights(gramian, losses.detach().double()),
                              (len(losses),))
            method.last_weights = weights.detach()
            direction = weights.to(jac.dtype) @ jac
        else:
            if method.grad_source == "rep_batchsum":
                raise ValueError(f"{type(method).__name__} needs the Jacobian; rep_batchsum applies to Gramian methods")
            sync = self.sync if self.uses_rep else None
            full = jac if sync is None else sync.gather(jac / sync.world_size, dim=1)
            if scale != 1 and not torch.isfinite(full).all():
                return None
            direction = checked(method, "aggregate", method.aggregate(full, losses.detach()), (full.shape[1],))
            if sync is not None:
                n = jac.shape[1]
                direction = sync.world_size * direction[sync.rank * n : (sync.rank + 1) * n]
            weights = torch.ones(len(losses), dtype=losses.dtype, device=losses.device)
        if not torch.isfinite(direction).all():
            raise FloatingPointError(f"{type(method).__name__} produced a non-finite update direction")
        return weights.detach(), direction, mode

    def _gramian(self, jac: Tensor, rep: Tensor | None) -> Tensor:
        """The float64 Gramian of the global batch's per-task gradients.

        Parameters: ``jac`` is already the mean over ranks. ``rep_full``: the global representation Jacobian is
        every rank's ``J_r / R`` side by side, so its Gramian is ``sum_r J_r J_r^T / R^2``. ``rep_batchsum``: the
        batch sum of the global one is the mean over ranks of the local batch sums.
        """
        source = self.method.grad_source
        view = jac.view(len(jac), rep.shape[0], -1).sum(dim=1) if source == "rep_batchsum" else jac
        if self.sync is not None and source == "rep_batchsum":
            view = self.sync.mean(view)
        j64 = view.double()
        gramian = j64 @ j64.T
        if self.sync is not None and source == "rep_full":
            gramian = self.sync.sum(gramian) / self.sync.world_size**2
        return gramian

    def _mean_grads(self, params: Sequence[Tensor]) -> None:
        if self.sync is not None:
            self.sync.mean_grads_(params)

    def param_gramian(self, losses: Tensor, z: Tensor | None = None, z_in: Tensor | None = None) -> Tensor:
        """The float64 Gramian of the per-task gradients of the shared parameters, keeping the graph. When the
        heads saw the detached ``z_in``, each task's gradient w.r.t. ``z`` is pushed through the encoder."""
        if z_in is not None and z is not None and z_in is not z:
            jz, _ = jacobian(losses, [z_in], self.jacobian_mode)
            rows = [flat_grads(torch.autograd.grad(z, self.shared, grad_outputs=g.view_as(z), retain_graph=True,
                                                   allow_unused=True), self.shared) for g in jz]
            jac = torch.stack(rows)
        else:
            jac, _ = jacobian(losses, self.shared, self.jacobian_mode)
        j64 = jac.detach().double()
        return j64 @ j64.T

    def _backward_heads(self, losses: Tensor, weights: Tensor, scale: float = 1.0) -> None:
        """Each head gets the gradient of its own loss (``own``) or of its weighted loss (``weighted``)."""
        coeffs = weights.to(losses.dtype) if self.method.head_weighting == "weighted" else torch.ones_like(losses)
        if self.heads:
            torch.autograd.backward(scale * (coeffs * losses).sum(), inputs=self.heads,
                                    retain_graph=bool(self.method_params))
        if self.method_params:
            torch.autograd.backward(scale * losses.sum(), inputs=self.method_params)
        self._mean_grads(self.heads + self.method_params)


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def checked(method: Method, hook: str, value, shape: tuple[int, ...]) -> Tensor:
    """``value`` if it is a finite tensor of ``shape``; else an error naming the method and the hook."""
    name = getattr(method, "registry_name", type(method).__name__)
    if not isinstance(value, Tensor) or tuple(value.shape) != shape:
        got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else f"a {type(value).__name__}"
        raise ValueError(f"method {name!r} ({type(method).__name__}): {hook} returned {got}, expected a tensor of "
                         f"shape {shape}")
    if not torch.isfinite(value).all():
        raise FloatingPointError(f"method {name!r} ({type(method).__name__}): {hook} returned non-finite weights "
                                 f"or direction {value.flatten()[:8].tolist()}")
    return value


def _grad_norm(params: Sequence[nn.Parameter]) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0
