"""Checks any method class must pass before it trains: the contract, its declared needs, determinism, and
finite outputs on adversarial Jacobians. Used by ``mtobench submit`` on plugins and by the tests on built-ins.

Each check returns a list of problems (empty when it passes), so a report can name every failure at once.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs

CLEAR_ERRORS = (ValueError, RuntimeError, FloatingPointError)
"""Exceptions a method may raise on a degenerate input (with a message), instead of returning a direction."""
NUM_TASKS = 3
DIM = 8


def adversarial_jacobians(dim: int = DIM) -> dict[str, np.ndarray]:
    """Inputs that break naive code: zeros, exact opposites, duplicates, huge and tiny scales, T = 1."""
    rng = np.random.default_rng(123)
    g = rng.standard_normal(dim)
    return {
        "all_zero": np.zeros((3, dim)),
        "opposite": np.stack([g, -g]),
        "duplicate": np.stack([g, g, g]),
        "opposite_and_zero": np.stack([g, -2 * g, np.zeros(dim)]),
        "huge": 1e15 * rng.standard_normal((3, dim)),
        "tiny": 1e-15 * rng.standard_normal((3, dim)),
        "single_task": g[None],
        "more_tasks_than_dims": rng.standard_normal((5, 3)),
    }


def adversarial_losses() -> dict[str, list[float]]:
    """Loss vectors for loss-weighting methods: equal, tiny, huge, very unequal, one task."""
    return {"equal": [1.0, 1.0, 1.0], "tiny": [1e-12, 2e-12, 3e-12], "huge": [1e12, 2e12, 3e12],
            "unequal": [1e-6, 1.0, 1e6], "single_task": [0.7]}


def _overrides(cls: type, name: str) -> bool:
    return getattr(cls, name) is not getattr(Method, name)


def uses_aggregate(cls: type[Method]) -> bool:
    """Whether ``aggregate`` is defined (overridden, or given by the base class to a Gramian method)."""
    return cls.needs is Needs.GRAMIAN or _overrides(cls, "aggregate")


def check_contract(cls: type, num_tasks: int = NUM_TASKS) -> list[str]:
    """A ``Method`` subclass whose ``needs`` is a ``Needs``, built from ``num_tasks`` alone, whose ``hparams()``
    name exactly its constructor arguments and rebuild it, and whose state dict round-trips."""
    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        return [f"{cls!r} is not a subclass of benchmark.methods.Method"]
    if not isinstance(cls.needs, Needs):
        return [f"needs={cls.needs!r} is not a benchmark.methods.Needs member"]
    try:
        method = cls(num_tasks=num_tasks)
    except Exception as exc:  # noqa: BLE001 - reported
        return [f"{cls.__name__}(num_tasks={num_tasks}) raised {exc!r}; every hyper-parameter needs a default"]
    problems = []
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "num_tasks"}
    try:
        hparams = method.hparams()
    except Exception as exc:  # noqa: BLE001 - reported
        return [f"hparams() raised {exc!r}"]
    if not isinstance(hparams, dict) or set(hparams) != accepted:
        problems.append(f"hparams() returned {hparams!r}; it must name exactly the constructor arguments "
                        f"{sorted(accepted)}")
    else:
        try:
            rebuilt = cls(num_tasks=num_tasks, **hparams).hparams()
            if rebuilt != hparams:
                problems.append(f"rebuilding from hparams() {hparams} gives hparams() {rebuilt}")
        except Exception as exc:  # noqa: BLE001 - reported
            problems.append(f"cannot rebuild from hparams() {hparams}: {exc!r}")
    try:
        clone = cls(num_tasks=num_tasks)
        clone.load_state_dict(method.state_dict())
    except Exception as exc:  # noqa: BLE001 - reported
        problems.append(f"state_dict() does not load into a fresh instance: {exc!r}")
    return problems


def check_needs(cls: type[Method], num_tasks: int = NUM_TASKS) -> list[str]:
    """The hook of the declared ``needs`` exists and answers with ``[T]`` finite weights (or a ``[P]``
    direction); a Gramian method's direction depends on ``J`` only through ``J J^T``: rotating the Jacobian's
    columns by an orthogonal ``Q`` rotates the direction by ``Q`` (its weights see only the Gramian)."""
    needs, problems = cls.needs, []
    if _overrides(cls, "own_step"):
        return []
    hook = {Needs.LOSSES: "loss_weights", Needs.GRAMIAN: "gramian_weights", Needs.JACOBIAN: "aggregate"}[needs]
    if not _overrides(cls, hook):
        return [f"declares needs={needs.value!r} but does not implement {hook}()"]
    losses = torch.tensor([0.5, 1.2, 2.0][:num_tasks] + [1.0] * max(0, num_tasks - 3))
    jac = torch.as_tensor(np.random.default_rng(7).standard_normal((num_tasks, 12)), dtype=torch.float64)
    torch.manual_seed(0)
    method = cls(num_tasks=num_tasks)
    if needs is Needs.LOSSES:
        weights = method.loss_weights(method.transform_losses(losses))
        if not (isinstance(weights, Tensor) and weights.shape == (num_tasks,)):
            problems.append(f"loss_weights() returned {weights!r}, expected a tensor of shape ({num_tasks},)")
        return problems
    if needs is Needs.GRAMIAN:
        weights = method.gramian_weights(jac @ jac.T, losses.double())
        if not (isinstance(weights, Tensor) and weights.shape == (num_tasks,)):
            return [f"gramian_weights() returned {weights!r}, expected a tensor of shape ({num_tasks},)"]
        q = torch.linalg.qr(torch.as_tensor(np.random.default_rng(8).standard_normal((12, 12))))[0]
        torch.manual_seed(0)
        plain = cls(num_tasks=num_tasks).aggregate(jac, losses.double())
        torch.manual_seed(0)
        rotated = cls(num_tasks=num_tasks).aggregate(jac @ q, losses.double())
        if not torch.allclose(rotated, plain @ q, rtol=1e-6, atol=1e-9 * float(plain.abs().max()) + 1e-12):
            problems.append("declares needs='gramian' but aggregate(J Q) != aggregate(J) Q for an orthogonal Q: "
                            "its direction depends on more than J J^T")
        return problems
    direction = method.aggregate(jac, losses.double())
    if not (isinstance(direction, Tensor) and direction.shape == (jac.shape[1],)):
        problems.append(f"aggregate() returned {direction!r}, expected a tensor of shape ({jac.shape[1]},)")
    return problems


def _outputs(cls: type[Method], seed: int, steps: int = 3) -> list[Tensor]:
    """What a fresh instance answers on ``steps`` fixed inputs after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    method = cls(num_tasks=NUM_TASKS)
    rng = np.random.default_rng(11)
    out = []
    for _ in range(steps):
        jac = torch.as_tensor(rng.standard_normal((NUM_TASKS, DIM)), dtype=torch.float32)
        losses = torch.as_tensor(rng.uniform(0.2, 2.0, NUM_TASKS), dtype=torch.float32)
        if uses_aggregate(cls):
            out.append(method.aggregate(jac, losses).detach().clone())
        else:
            out.append(method.loss_weights(method.transform_losses(losses)).detach().clone())
    return out


def check_determinism(cls: type[Method]) -> list[str]:
    """Two fresh instances under the same global seed give bit-identical outputs over three steps."""
    if _overrides(cls, "own_step") and not uses_aggregate(cls) and not _overrides(cls, "loss_weights"):
        return []
    first, second = _outputs(cls, 0), _outputs(cls, 0)
    bad = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if not torch.equal(a, b)]
    return [f"not deterministic: same seed, different outputs at steps {bad}"] if bad else []


def _finite_or_clear(call: Callable[[], Tensor], case: str, what: str) -> list[str]:
    """A finite tensor, or one of :data:`CLEAR_ERRORS` with a message; anything else is a problem."""
    try:
        result = call()
    except CLEAR_ERRORS as exc:
        return [] if str(exc).strip() else [f"{what} on {case!r} raised {type(exc).__name__} without a message"]
    except Exception as exc:  # noqa: BLE001 - reported
        return [f"{what} on {case!r} raised {exc!r}; raise ValueError/RuntimeError with a message instead"]
    if not isinstance(result, Tensor) or not bool(torch.isfinite(result).all()):
        return [f"{what} on {case!r} returned a non-finite value: {result!r}"]
    return []


def check_adversarial(cls: type[Method]) -> list[str]:
    """No NaN or inf on :func:`adversarial_jacobians` (on :func:`adversarial_losses` for a method that only
    weights losses), nor in its logged statistics; a clear error is allowed."""
    problems: list[str] = []
    if uses_aggregate(cls):
        for case, g in adversarial_jacobians().items():
            jac = torch.as_tensor(g, dtype=torch.float32)
            torch.manual_seed(0)
            method = cls(num_tasks=jac.shape[0])
            losses = torch.linspace(0.5, 1.5, jac.shape[0])
            problems += _finite_or_clear(lambda m=method, j=jac, ls=losses: m.aggregate(j, ls), case, "aggregate()")
            problems += _finite_stats(method, case)
    elif _overrides(cls, "loss_weights"):
        for case, values in adversarial_losses().items():
            losses = torch.tensor(values)
            torch.manual_seed(0)
            method = cls(num_tasks=len(values))
            problems += _finite_or_clear(lambda m=method, ls=losses: m.loss_weights(m.transform_losses(ls)), case,
                                         "loss_weights()")
            problems += _finite_stats(method, case)
    return problems


def _finite_stats(method: Method, case: str) -> list[str]:
    bad = {k: v for k, v in method.stats().items() if not math.isfinite(v)}
    return [f"stats() on {case!r} holds non-finite values {bad}"] if bad else []


CHECKS: dict[str, Callable[[type[Method]], list[str]]] = {
    "contract": check_contract,
    "needs": check_needs,
    "determinism": check_determinism,
    "adversarial": check_adversarial,
}


def validate(cls: type) -> dict[str, list[str]]:
    """Every check's problems, keyed by check name; later checks are skipped when the contract fails."""
    report = {"contract": check_contract(cls)}
    if report["contract"]:
        return report
    for name, check in list(CHECKS.items())[1:]:
        try:
            report[name] = check(cls)
        except Exception as exc:  # noqa: BLE001 - a crash in a check is a failure of that check
            report[name] = [f"raised {exc!r}"]
    return report
