"""Preconditioned curvature and the step sizes at which gradient methods stay stable.

Preconditioned curvature (:func:`preconditioned_matvec`) is in loss units per squared
*preconditioned* step: for preconditioned gradient descent ``x -= lr * D^{-1} g`` on a
quadratic, ``lr * lambda_max(D^{-1} H) < 2`` is the stability condition; momentum changes the
constant (:func:`stability_threshold`, dimensionless).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from optprobe.estimators.functional import MatVec, ParamDict
from optprobe.validate import check_choice

#: Update rules :func:`stability_threshold` knows.
STABILITY_RULES = ("sgd", "nesterov", "adam")


def preconditioned_matvec(matvec: MatVec, precond_diag: Tensor) -> MatVec:
    """``v -> D^{-1/2} H D^{-1/2} v`` for the positive diagonal ``D = diag(precond_diag)``.

    The operator is symmetric and similar to ``D^{-1} H``, so its eigenvalues are those of the
    preconditioned Hessian (for Adam, ``D = sqrt(v_hat) + eps``: the preconditioned sharpness,
    in loss units per squared preconditioned step). ``precond_diag`` is a flat vector on the
    matvec's device; it is used in float64.
    """
    if precond_diag.dim() != 1:
        raise ValueError(
            f"precond_diag must be a flat vector, got shape {tuple(precond_diag.shape)}; "
            "flatten the per-parameter preconditioner (functional.flatten)"
        )
    d = precond_diag.detach().to(torch.float64)
    bad = ~(torch.isfinite(d) & (d > 0))
    if bool(bad.any()):
        raise ValueError(
            f"precond_diag must be finite and > 0 everywhere; {int(bad.sum())} of {d.numel()} "
            f"entries are not (min {float(d.min())}); add Adam's eps or clamp before passing it"
        )
    scale = d.rsqrt()

    def precond(v: Tensor) -> Tensor:
        return scale * matvec(scale * v).to(torch.float64)

    return precond


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: ParamDict) -> Tensor | None:
    """Adam's current diagonal preconditioner ``sqrt(v_hat) + eps`` as one flat float64 vector.

    ``v_hat = exp_avg_sq / (1 - beta2^step)`` (``max_exp_avg_sq`` with amsgrad), in the order
    of ``params``: the preconditioner of the last applied step (gradient units). ``None`` when
    some parameter has no Adam-type state yet (before the first step) or is not in the
    optimizer.
    """
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    parts = []
    for p in params.values():
        group, state = group_of.get(id(p)), optimizer.state.get(p, {})
        if group is None or "betas" not in group or "exp_avg_sq" not in state:
            return None
        step = float(state["step"])
        if step < 1:
            return None
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        v_hat = v.detach().to(torch.float64) / (1.0 - float(group["betas"][1]) ** step)
        parts.append((v_hat.sqrt() + float(group["eps"])).reshape(-1))
    return torch.cat(parts)


def stability_threshold(rule: str, beta: float = 0.0, dampening: float = 0.0) -> float:
    """The largest ``lr * lambda_max`` (dimensionless) at which ``rule`` is stable on a quadratic.

    ``lambda_max`` is of H for ``sgd``/``nesterov`` and of the preconditioned ``D^{-1} H`` for
    ``adam`` (Cohen et al. 2021; 2022). With momentum ``beta`` (Adam: beta1): 2 (SGD without
    momentum), ``(2 + 2 beta) / (1 - dampening)`` (heavy ball; inf for dampening >= 1),
    ``(2 + 2 beta) / (1 + 2 beta)`` (Nesterov), ``(2 + 2 beta) / (1 - beta)`` (Adam-type; 38
    for beta1 = 0.9).
    """
    check_choice("rule", rule, STABILITY_RULES)
    if rule == "adam":
        return (2.0 + 2.0 * beta) / (1.0 - beta)
    if beta == 0.0:
        return 2.0
    if rule == "nesterov":
        return (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta)
    return (2.0 + 2.0 * beta) / (1.0 - dampening) if dampening < 1 else math.inf
