"""Per-step quantities of the smoothness and convexity analyses (docs/metrics.md sections 1-2).

For the step x_t -> x_{t+1} = x_t + Δ_t on mini-batch loss f_t, and a reference point x*:

    D_t = f_t(x_{t+1}) - f_t(x_t)                      progress made (nats)
    inst_gap = D_t - <g⁺_t, Δ_t>   (≤ 0 if f_t is convex along the step, seen from x_{t+1})
    inst_gap_old = D_t - <g_t, Δ_t>  (≥ 0 if convex along the step, seen from x_t)
    smooth_eff = 2 (D_t - <g_t, Δ_t>) / ‖Δ_t‖²   (smallest L for the descent lemma here;
                                                  undefined within the losses' rounding)
    descent_bound = <g_t, Δ_t> + L/2 ‖Δ_t‖²       (holds when ≥ D_t and < 0)
    ref gap = f_t(x_t) - f_t(x*) - <g_t, x_t - x*>   (≤ 0 when convex w.r.t. x*; nats)
    weak_cvx = gap / (½‖x_t - x*‖²) when gap > tol, else 0

Inputs are flat float64 vectors (parameters, gradients in nats per parameter unit); every
function is pure. ``effective_smoothness``, ``weak_convexity`` and ``descent_bound`` also take
numpy arrays (the verdicts recompute them over a run from the logged keys).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _scalar_or_array(out: np.ndarray) -> Any:
    return float(out) if out.ndim == 0 else out


def effective_smoothness(remainder: Any, sq_norm: Any, tol: Any) -> Any:
    """``smooth_eff`` = 2 (D_t - <g_t, Δ_t>) / ‖Δ_t‖² from the remainder D_t - <g_t, Δ_t>
    (nats), ‖Δ_t‖² and the losses' rounding ``tol`` (nats): NaN where |remainder| ≤ tol (the
    remainder is rounding noise there) or ‖Δ_t‖ = 0. Floats or numpy arrays."""
    remainder, sq_norm = np.asarray(remainder, dtype=float), np.asarray(sq_norm, dtype=float)
    defined = (np.abs(remainder) > tol) & (sq_norm > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(defined, 2.0 * remainder / sq_norm, np.nan)
    return _scalar_or_array(out)


def weak_convexity(gap: Any, dist: Any, tol: Any) -> Any:
    """``weak_cvx`` = gap / (½‖x_t - x*‖²) when the gap exceeds the rounding ``tol`` under
    which ``ref_gap`` counts as held, else 0; NaN at distance 0. Floats or numpy arrays."""
    gap, dist = np.asarray(gap, dtype=float), np.asarray(dist, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(gap > tol, gap / (0.5 * dist**2), 0.0)
    return _scalar_or_array(np.where(dist > 0, out, np.nan))


def _cos(dot: float, norm_a: float, norm_b: float) -> float:
    """cos(a, b) from ⟨a, b⟩ and the norms; NaN where a norm is 0."""
    denom = norm_a * norm_b
    return dot / denom if denom > 0 else math.nan


def _norm(a: Tensor) -> float:
    return float(torch.linalg.vector_norm(a))


def step_quantities(
    loss_old: float,
    loss_new: float,
    grad_new: Tensor,
    delta: Tensor,
    grad_old: Tensor | None = None,
    delta_prev: Tensor | None = None,
    tol: float = 0.0,
) -> dict[str, float]:
    """Per-step keys (without the ``step/`` prefix) from flat float64 vectors.

    ``grad_old`` = g_t at x_t, ``grad_new`` = g⁺_t at x_{t+1}, both on the same batch;
    without ``grad_old`` only the keys that need no old-point gradient are returned. ``tol``:
    the losses' rounding (nats), below which ``smooth_eff`` is NaN (undefined).
    """
    d = loss_new - loss_old
    sq = float(delta @ delta)
    norm_delta = math.sqrt(sq)
    lin_new = float(grad_new @ delta)
    out = {
        "loss_change": d,
        "lin_new": lin_new,
        "inst_gap": d - lin_new,
        "update_cos_new": _cos(lin_new, _norm(grad_new), norm_delta),
        "update_norm": norm_delta,
    }
    if grad_old is not None:
        lin_old = float(grad_old @ delta)
        grad_norm = _norm(grad_old)
        out.update(
            lin_old=lin_old,
            inst_gap_old=d - lin_old,
            smooth_lip=_norm(grad_new - grad_old) / norm_delta,
            smooth_eff=effective_smoothness(d - lin_old, sq, tol),
            update_cos_old=_cos(lin_old, grad_norm, norm_delta),
            grad_norm=grad_norm,
        )
    if delta_prev is not None:
        out["update_cos_prev"] = _cos(float(delta @ delta_prev), norm_delta, _norm(delta_prev))
    return out


def simpson_quantities(
    grad_old: Tensor, grad_mid: Tensor, grad_new: Tensor, delta: Tensor
) -> dict[str, float]:
    """D_t and smooth_eff by Simpson's rule along the step, from gradients alone (no loss
    difference, so no rounding floor): with φ(s) = f_t(x_t + sΔ_t), D_t = ∫₀¹ φ'(s) ds and
    φ'(s) = <g(x_t + sΔ_t), Δ_t>, so

        loss_change_quad = <(g_t + 4 g_mid + g⁺_t) / 6, Δ_t>      (nats; exact for quartic f,
                                                                     error O(‖Δ‖⁵) for smooth f)
        smooth_eff_quad  = 2 (loss_change_quad - <g_t, Δ_t>) / ‖Δ_t‖²
                         = (4 <g_mid - g_t, Δ_t> + <g⁺_t - g_t, Δ_t>) / (3 ‖Δ_t‖²)

    with g_mid the gradient at x_t + Δ_t / 2 (flat float64 vectors, one batch). The gradient
    differences are taken before the inner products, so a small remainder is not the difference
    of two large numbers. NaN for Δ_t = 0.

    Not exact on piecewise-smooth losses (ReLU, max-pooling, hinge): where the step crosses a
    kink, φ' jumps, Simpson's rule misses the jump's share of the integral and the error is of
    first order in ‖Δ_t‖ (one ReLU crossed at 60% of the step: 0.17 for D_t = 0.4, tested;
    9-38 x ``float_tol`` on the study's ReLU networks, issue #23). On such networks the
    ``_quad`` keys are a second estimate beside the loss difference, not a more exact one.
    """
    sq = float(delta @ delta)
    lin_old = float(grad_old @ delta)
    rise = 4.0 * float((grad_mid - grad_old) @ delta) + float((grad_new - grad_old) @ delta)
    return {
        "loss_change_quad": lin_old + rise / 6.0,
        "smooth_eff_quad": rise / (3.0 * sq) if sq > 0 else math.nan,
    }


def descent_bound(lin_old: Any, update_norm: Any, smoothness: Any) -> Any:
    """What an L-smooth analysis predicts for the loss change: <g,Δ> + L/2 ‖Δ‖² (nats);
    floats or numpy arrays."""
    return lin_old + 0.5 * smoothness * update_norm**2


def float_tolerance(dtype: torch.dtype, loss_abs: float) -> float:
    """Rounding of a loss of size ``loss_abs`` (nats) in floating type ``dtype`` (4 ulps, nats):
    sign checks (``inst_gap <= 0``...) count as held within it."""
    return 4 * torch.finfo(dtype).eps * loss_abs


def reference_quantities(
    loss_x: float, loss_ref: float, grad: Tensor, x: Tensor, x_ref: Tensor, tol: float = 0.0
) -> dict[str, float]:
    """Per-step reference keys (without the ``ref/`` prefix) from flat float64 vectors;
    ``tol``: the losses' rounding (nats) within which the gap counts as 0 (``weak_cvx``)."""
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
        "weak_cvx": weak_convexity(gap, math.sqrt(dist_sq), tol),
        "dist": math.sqrt(dist_sq),
    }
