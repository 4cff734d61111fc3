"""GradDrop: gradient sign dropout on the task Jacobian (docs/methods.md §10)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import choice, number
from benchmark.methods.registry import register


def graddrop_purity(grads: Tensor, eps: float = 0.0) -> Tensor:
    """The positive sign purity ``P = 1/2 (1 + sum_i g_i / (sum_i |g_i| + eps))`` of every column of ``grads``
    ``[T, N]`` (Chen et al. 2020, the purity of their method section), in float64; ``1/2`` where every
    ``g_i`` is 0 (nothing to keep there).

    ``P = 1`` where all ``g_i >= 0`` and ``P = 0`` where all ``g_i <= 0`` exactly when ``eps = 0``.
    """
    total = grads.sum(dim=0, dtype=torch.float64)
    mass = grads.abs().sum(dim=0, dtype=torch.float64) + eps
    return 0.5 * (1.0 + torch.where(mass > 0, total / mass, torch.zeros_like(total)))


def graddrop_masks(grads: Tensor, uniform: Tensor, eps: float = 0.0) -> Tensor:
    """The boolean keep masks ``M_i = 1[U < P] 1[g_i > 0] + 1[U >= P] 1[g_i < 0]`` ``[T, N]`` (the paper's
    masks), for ``U`` in ``[0, 1)`` per column: the positive entries of a column survive with probability ``P``,
    else the negative ones. (The paper's ``P > U`` / ``P < U``, with the null tie ``U = P`` given to the negative
    side, so that a column whose gradients all share a sign is kept with certainty.)"""
    keep_positive = uniform.to(torch.float64) < graddrop_purity(grads, eps)
    return torch.where(keep_positive, grads > 0, grads < 0)


def graddrop_direction(jacobian: Tensor, uniform: Tensor, leak: float = 0.0, eps: float = 0.0) -> Tensor:
    """``d = sum_i (leak + (1 - leak) M_i) * g_i`` for the rows ``g_i`` of ``jacobian`` ``[T, N]``: with
    ``leak = 0`` the surviving entries of each column all share a sign; ``leak = 1`` is the plain sum."""
    masks = graddrop_masks(jacobian, uniform, eps).to(jacobian.dtype)
    return ((leak + (1.0 - leak) * masks) * jacobian).sum(dim=0)


def graddrop_rep_direction(per_sample: Tensor, activation: Tensor, uniform: Tensor, leak: float = 0.0,
                           eps: float = 0.0) -> Tensor:
    """The paper's form at an activation layer ``A`` (as LibMTL's ``GradDrop``): per-sample gradients
    ``per_sample`` ``[T, B, *F]`` w.r.t. ``A`` ``[B, *F]``; the purity and masks use ``sign(A) * grad`` summed over
    the batch (``uniform`` ``[*F]``), the masks are shared by the batch, and the result ``[B, *F]`` is
    ``sum_i (leak + (1 - leak) M_i) * grad_A L_i``."""
    signed = (per_sample * activation.sign()).sum(dim=1)
    masks = graddrop_masks(signed.flatten(1), uniform.flatten(), eps).view_as(signed).to(per_sample.dtype)
    return ((leak + (1.0 - leak) * masks).unsqueeze(1) * per_sample).sum(dim=0)


@register("graddrop")
class GradDrop(Method):
    """GradDrop (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing Deep
    Multitask Models with Gradient Sign Dropout", NeurIPS 2020, arXiv 2010.06808: purity ``P``, masks ``M_i``,
    gradient ``sum_i M_i grad L_i``) on the rows of the Jacobian: :func:`graddrop_direction` with one uniform
    draw per coordinate and step.

    * Form: the engine hands a Jacobian method the ``[T, P]`` Jacobian but not the activation, so this is the
      parameter-level form of the CAGrad/FAMO/fairgrad repos and torchjd (no ``sign(A)`` factor, no batch sum;
      their ``mean x T`` is the sum used here). docs/methods.md §10 recommends the paper form on the representation
      (:func:`graddrop_rep_direction`, tested), which needs the engine to pass ``A``; ``grad_source="rep_full"``
      applies the parameter-level rule to the flattened ``grad_z L_t`` (without ``sign(A)`` and batch sum).
    * ``leak`` (0): the fraction of every gradient kept regardless of the mask.
    * ``eps`` (0, exact): the guard in the purity's denominator; LibMTL uses 1e-7, the CAGrad lineage 1e-8
      (then a column whose gradients share a sign is dropped with probability about ``eps / sum_i |g_i|``).
    * Heads get their own gradient; native scale = sum. The uniforms come from a generator on the Jacobian's
      device seeded by the method's own CPU RNG (seeded once from the global one, saved with the module), so a
      resumed run draws the same masks on the same device.
    """

    needs = Needs.JACOBIAN

    def __init__(self, num_tasks: int, leak: float = 0.0, eps: float = 0.0, grad_source: str = "params") -> None:
        super().__init__(num_tasks, grad_source=grad_source)
        choice(self, "grad_source", grad_source, ("params", "rep_full"))
        self.leak = number(self, "leak", leak, low=0, high=1)
        self.eps = number(self, "eps", eps, low=0)

    def uniform(self, size: int, device: torch.device | str = "cpu") -> Tensor:
        """``size`` float64 uniforms in ``[0, 1)`` on ``device``, from a generator seeded by the method's RNG."""
        seed = int(torch.randint(0, 2**62, (), generator=self.generator()))
        local = torch.Generator(device=device).manual_seed(seed)
        return torch.rand(size, generator=local, dtype=torch.float64, device=device)

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        direction = graddrop_direction(jacobian, self.uniform(jacobian.shape[1], jacobian.device), self.leak, self.eps)
        mixed = (jacobian > 0).any(dim=0) & (jacobian < 0).any(dim=0)
        self.step_stats = {"sign_conflict_fraction": float(mixed.double().mean()) if mixed.numel() else 0.0}
        return direction
