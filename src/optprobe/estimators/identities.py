"""Per-step quantities of the smoothness and convexity analyses (docs/metrics.md sections 1-2).

For the step x_t -> x_{t+1} = x_t + Δ_t on mini-batch loss f_t, and a reference point x*:

    D_t = f_t(x_{t+1}) - f_t(x_t)                      progress made (nats)
    inst_gap = D_t - <g⁺_t, Δ_t>   (≤ 0 if f_t is convex along the step, seen from x_{t+1})
    inst_gap_old = D_t - <g_t, Δ_t>  (≥ 0 if convex along the step, seen from x_t)
    smooth_eff = 2 (D_t - <g_t, Δ_t>) / ‖Δ_t‖²   (smallest L for the descent lemma here)
    descent_bound = <g_t, Δ_t> + L/2 ‖Δ_t‖²       (holds when ≥ D_t and < 0)
    ref gap = f_t(x_t) - f_t(x*) - <g_t, x_t - x*>   (≤ 0 when convex w.r.t. x*; nats)

Inputs are flat float64 vectors (parameters, gradients in nats per parameter unit); every
function is pure.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _cos(a: Tensor, b: Tensor) -> float:
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else math.nan


def step_quantities(
    loss_old: float,
    loss_new: float,
    grad_new: Tensor,
    delta: Tensor,
    grad_old: Tensor | None = None,
    delta_prev: Tensor | None = None,
) -> dict[str, float]:
    """Per-step keys (without the ``step/`` prefix) from flat float64 vectors.

    ``grad_old`` = g_t at x_t, ``grad_new`` = g⁺_t at x_{t+1}, both on the same batch;
    without ``grad_old`` only the keys that need no old-point gradient are returned.
    """
    d = loss_new - loss_old
    sq = float(delta @ delta)
    lin_new = float(grad_new @ delta)
    out = {
        "loss_change": d,
        "lin_new": lin_new,
        "inst_gap": d - lin_new,
        "update_cos_new": _cos(grad_new, delta),
        "update_norm": math.sqrt(sq),
    }
    if grad_old is not None:
        lin_old = float(grad_old @ delta)
        out.update(
            lin_old=lin_old,
            inst_gap_old=d - lin_old,
            smooth_lip=float((grad_new - grad_old).norm()) / math.sqrt(sq),
            smooth_eff=2 * (d - lin_old) / sq,
            update_cos_old=_cos(grad_old, delta),
            grad_norm=float(grad_old.norm()),
        )
    if delta_prev is not None:
        out["update_cos_prev"] = _cos(delta, delta_prev)
    return out


def descent_bound(lin_old: float, update_norm: float, smoothness: float) -> float:
    """What an L-smooth analysis predicts for the loss change: <g,Δ> + L/2 ‖Δ‖² (nats)."""
    return lin_old + 0.5 * smoothness * update_norm**2


def float_tolerance(dtype: torch.dtype, loss_abs: float) -> float:
    """Rounding of a loss of size ``loss_abs`` (nats) in floating type ``dtype`` (4 ulps, nats):
    sign checks (``inst_gap <= 0``...) count as held within it."""
    return 4 * torch.finfo(dtype).eps * loss_abs


def reference_quantities(
    loss_x: float, loss_ref: float, grad: Tensor, x: Tensor, x_ref: Tensor
) -> dict[str, float]:
    """Per-step reference keys (without the ``ref/`` prefix) from flat float64 vectors."""
    diff = x - x_ref
    lin = float(grad @ diff)
    excess = loss_x - loss_ref
    dist_sq = float(diff @ diff)
    gap = excess - lin
    return {
        "gap": gap,
        "excess": excess,
        "lin": lin,
        "pl": float(grad @ grad) / (2 * excess) if excess > 0 else math.nan,
        "weak_cvx": max(0.0, gap) / (0.5 * dist_sq) if dist_sq > 0 else math.nan,
        "dist": math.sqrt(dist_sq),
    }
