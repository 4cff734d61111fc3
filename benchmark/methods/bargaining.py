"""What Nash-MTL and FairGrad share around their fixed-point solve: failures, clipping, state and stats."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import integer, number
from benchmark.methods.solvers.fixed_point import BargainingError, FixedPoint, gramian_array

CLIP_EPS = 1e-6
"""``torch.nn.utils.clip_grad_norm_`` divides ``max_norm`` by ``norm + 1e-6``."""


class FixedPointMethod(Method):
    """What Nash-MTL and FairGrad share: the solver's failure policy, the clipping, the state and the stats.

    * **Failures** (docs/methods.md §0.7 and §13 Recommended). A failed solve (:class:`BargainingError`)
      reuses the last solved weights, is counted (``solver_failures`` in ``stats()``, and a warning), and raises
      ``RuntimeError`` once the count exceeds ``max_solver_failures``. With no earlier solution to reuse it
      raises at once: there is never a fallback to equal weights.
    * **Clipping** (§0.4). ``max_norm`` multiplies the weights by ``min(1, max_norm / (|w @ G| + 1e-6))`` with
      ``|w @ G| = sqrt(w^T M w)``, the factor ``torch.nn.utils.clip_grad_norm_`` would apply to the shared
      gradient (for ``grad_source="params"``; in the representation modes it clips the representation
      gradient). With ``head_weighting="weighted"`` the heads see the clipped weights too, unlike the
      reference codes, which clip the shared parameters only: for those, use ``max_norm=None`` and
      ``train.clip_shared_grad_norm``.
    * **State** (``get_extra_state``): the last solution, the step counter and the failure count, so a resumed
      run warm-starts, reuses and counts as the uninterrupted one would.
    """

    needs = Needs.GRAMIAN

    def __init__(self, num_tasks: int, max_norm: float | None, max_iter: int, tol: float, max_solver_failures: int,
                 grad_source: str, head_weighting: str) -> None:
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        self.max_norm = number(self, "max_norm", max_norm, low=0, open_low=True, none=True)
        self.max_iter = integer(self, "max_iter", max_iter, 1)
        self.tol = number(self, "tol", tol, low=0, open_low=True)
        self.max_solver_failures = integer(self, "max_solver_failures", max_solver_failures, 0)
        self._solution: np.ndarray | None = None
        self._step = 0
        self.solver_failures = 0
        self.last_failure: str | None = None
        self._last: dict[str, float] = {}

    def solve(self, m: np.ndarray, start: np.ndarray | None) -> FixedPoint:
        """The method's fixed point on the float64 Gramian ``m`` (subclasses)."""
        raise NotImplementedError

    def scale(self) -> float:
        """The factor of the update scale (§0.3) applied to the solved weights before clipping."""
        return 1.0

    def wants_solve(self) -> bool:
        return True

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        m = gramian_array(gramian, type(self).__name__)
        stats = {"solver_iterations": 0.0, "solver_failed": 0.0}
        if self._solution is None or self.wants_solve():
            try:
                found = self.solve(m, self._solution)
            except BargainingError as exc:
                self._fail(exc)
                stats["solver_failed"] = 1.0
            else:
                self._solution = found.weights
                stats.update(solver_iterations=float(found.iterations), solver_residual=found.residual)
        self._step += 1
        weights = self._solution * self.scale()
        coef = 1.0
        if self.max_norm is not None:
            norm = math.sqrt(max(float(weights @ m @ weights), 0.0))
            coef = min(1.0, self.max_norm / (norm + CLIP_EPS))
        stats.update(clip_coef=coef, solver_failures=float(self.solver_failures))
        self._last = stats
        self.last_weights = torch.from_numpy(weights * coef).to(gramian.device)
        return self.last_weights

    def _fail(self, exc: BargainingError) -> None:
        name = type(self).__name__
        self.solver_failures += 1
        self.last_failure = str(exc)
        if self._solution is None:
            raise BargainingError(f"{name}: {exc}; there are no earlier weights to reuse (this method never falls "
                                  "back to equal weights)") from exc
        if self.solver_failures > self.max_solver_failures:
            raise BargainingError(f"{name}: {self.solver_failures} solver failures exceed max_solver_failures="
                                  f"{self.max_solver_failures}; the last: {exc}") from exc
        warnings.warn(f"{name}: solver failure {self.solver_failures} of at most {self.max_solver_failures} "
                      f"(reusing the previous weights): {exc}", RuntimeWarning, stacklevel=3)

    def stats(self) -> dict[str, float]:
        return {**super().stats(), **self._last}

    def get_extra_state(self) -> dict:
        return {"solution": None if self._solution is None else self._solution.tolist(), "step": self._step,
                "solver_failures": self.solver_failures, "last_failure": self.last_failure}

    def set_extra_state(self, state: dict) -> None:
        solution = state["solution"]
        self._solution = None if solution is None else np.array(solution, dtype=np.float64)
        self._step = int(state["step"])
        self.solver_failures = int(state["solver_failures"])
        self.last_failure = state["last_failure"]
