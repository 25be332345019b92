"""The constants fitted on one run (docs/metrics.md §2, §5), and the smoothness estimates the
descent-bound verdicts use (the ``path`` and ``local`` L of §1a).

Constants made of rounding noise are not reported: ``smooth_eff`` is undefined where
|D_t − ⟨g_t, Δ_t⟩| is within the losses' rounding (``float_tol``), and ``weak_cvx`` is 0 where
the gap is within it. Both are recomputed here from the logged keys with the probes' own
formulas (``optprobe.estimators.identities``), so runs logged before the floor existed get it
too. Step-probe constants are computed per batch scheme: unsuffixed for the same-batch keys
(``step/*``), with the suffix ``_fresh`` for the fresh-batch keys (``step_fresh/*``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from optprobe.analysis.columns import finite, finite_values, present, rows, tolerance
from optprobe.analysis.stats import pinball_loss, quantile_regression_line
from optprobe.assumptions import SCHEMES
from optprobe.estimators.identities import effective_smoothness, weak_convexity

LAMBDA_MAX_KEY = "curv/lambda_max"
PRECOND_LAMBDA_MAX_KEY = "curv/precond_lambda_max"
HVP_EXAMPLES_KEY = "curv/hvp_examples"


def scheme_suffix(prefix: str) -> str:
    """Constant-name suffix of a step-probe key prefix: '' for ``step``, ``_fresh`` for
    ``step_fresh``."""
    return "" if prefix == SCHEMES["same_batch"] else "_" + prefix.removeprefix("step_")


def defined_smooth_eff(df: pd.DataFrame, prefix: str) -> np.ndarray | None:
    """``<prefix>/smooth_eff`` per row, NaN where undefined (the remainder D − ⟨g,Δ⟩ =
    ``inst_gap_old`` within ``float_tol``) or not logged; recomputed from ``inst_gap_old`` and
    ``update_norm`` when those were logged, else the logged values. None without either."""
    gap_key, norm_key = f"{prefix}/inst_gap_old", f"{prefix}/update_norm"
    if gap_key in df.columns and norm_key in df.columns:
        tol = tolerance(df, f"{prefix}/float_tol")
        norm = df[norm_key].to_numpy(dtype=float)
        return effective_smoothness(df[gap_key].to_numpy(dtype=float), norm**2, tol)
    key = f"{prefix}/smooth_eff"
    return df[key].to_numpy(dtype=float) if key in df.columns else None


def undefined_smooth_eff(df: pd.DataFrame, prefix: str) -> int | None:
    """Probed steps with the old-point keys on which ``smooth_eff`` is undefined."""
    gap_key = f"{prefix}/inst_gap_old"
    eff = defined_smooth_eff(df, prefix)
    if eff is None or gap_key not in df.columns:
        return None
    checked = df[gap_key].notna().to_numpy()
    return int(np.count_nonzero(checked & np.isnan(eff)))


def path_sources(df: pd.DataFrame, prefix: str, suffix: str = "") -> list[str]:
    """The keys the ``path`` L takes its max over: ``<prefix>/smooth_lip`` and
    ``curv/lambda_max`` (``suffix="_P"``: ``smooth_lip_P`` and ``curv/precond_lambda_max``),
    those with a finite value. The curvature key is left out when its HVPs ran on a subset of
    the batch (``curv/hvp_examples`` logged): the Hessian of another function."""
    curvature = PRECOND_LAMBDA_MAX_KEY if suffix else LAMBDA_MAX_KEY
    keys = [f"{prefix}/smooth_lip{suffix}"]
    if finite_values(df, HVP_EXAMPLES_KEY) is None:
        keys.append(curvature)
    return [k for k in keys if finite_values(df, k) is not None]


def path_smoothness(df: pd.DataFrame, prefix: str, suffix: str = "") -> float | None:
    """The ``path`` L: the max over the whole run of the keys of :func:`path_sources`
    (every global L is at least this); None without any. In the optimizer's norm
    (``suffix="_P"``) λ_max(P⁻¹H) is the ‖·‖_P-Lipschitz constant of the quadratic model's
    gradient (logged only for diagonal preconditioners)."""
    found = [finite_values(df, k) for k in path_sources(df, prefix, suffix)]
    return float(max(v.max() for v in found)) if found else None


def path_origin(df: pd.DataFrame, prefix: str, suffix: str = "") -> str:
    """What sets the ``path`` L: each source key with the number of steps it was measured on,
    and the step and key of the max. λ_max enters only on the curvature probe's steps, so a
    sparser curvature cadence can only lower the path L (and make the bound hold more)."""
    return max_origin(df, path_sources(df, prefix, suffix))


def hessian_sources(df: pd.DataFrame, suffix: str = "") -> list[str]:
    """The one key of the ``hessian`` L: ``curv/lambda_max`` (``suffix="_P"``:
    ``curv/precond_lambda_max``), when logged on the whole batch (not ``hvp_examples``)."""
    key = PRECOND_LAMBDA_MAX_KEY if suffix else LAMBDA_MAX_KEY
    if finite_values(df, HVP_EXAMPLES_KEY) is not None or finite_values(df, key) is None:
        return []
    return [key]


def max_origin(df: pd.DataFrame, sources: list[str]) -> str:
    """ "the run's max of <key> (<n> steps) and ...; set at step <t> by <key>": which keys an
    L is the max of, on how many steps each was measured, and where the max was."""
    counts = [f"{k} ({int(np.isfinite(df[k].to_numpy(float)).sum())} steps)" for k in sources]
    best_key, best_row, best = "", -1, -math.inf
    for key in sources:
        values = df[key].to_numpy(float)
        finite_at = np.flatnonzero(np.isfinite(values))
        i = int(finite_at[np.argmax(values[finite_at])])
        if values[i] > best:
            best_key, best_row, best = key, i, float(values[i])
    where = ""
    if best_key:
        step = df["step"].iloc[best_row] if "step" in df.columns else best_row
        where = (
            f"; set at step {float(step):.0f} by {best_key}{_floor_note(df, best_key, best_row)}"
        )
    cadence = (
        ", λ_max only on the curvature probe's steps: a sparser cadence can only lower L"
        if any(k.startswith("curv/") for k in sources)
        else ""
    )
    return f"the run's max of {' and '.join(counts)}{where}{cadence}"


def _floor_note(df: pd.DataFrame, key: str, row: int) -> str:
    """Where ``smooth_lip_P`` set L_P: how much of it came from coordinates whose
    preconditioner was still at its floor ε (``smooth_lip_P_floor_share``)."""
    share_key = f"{key}_floor_share"
    count_key = key.replace("smooth_lip_P", "precond_floor_coords")
    if share_key not in df.columns or not np.isfinite(df[share_key].iloc[row]):
        return ""
    share = float(df[share_key].iloc[row])
    coords = df[count_key].iloc[row] if count_key in df.columns else math.nan
    return (
        f" ({100 * share:.0f}% of its ‖g⁺ − g‖² in the dual norm from {coords:.0f} coordinates "
        "with P at its floor ε: second moment still about 0)"
    )


def local_smoothness(df: pd.DataFrame, prefix: str) -> tuple[np.ndarray, str] | None:
    """The ``local`` L per row: ``<prefix>/curv_dir`` (Δᵀ H_t Δ / ‖Δ‖²) where logged, NaN
    (step not judged) elsewhere; None without any. ``smooth_eff`` is never used: it is the
    secant curvature of the same two losses, so its descent bound equals D_t by construction
    and would hold on every step that made progress."""
    curv_key = f"{prefix}/curv_dir"
    if curv_key not in df.columns:
        return None
    curv = df[curv_key].to_numpy(dtype=float)
    n_curv = int(np.count_nonzero(np.isfinite(curv)))
    if n_curv == 0:
        return None
    return curv, f"L = curv_dir (Δᵀ H_t Δ / ‖Δ‖², curvature along the step) on {n_curv} steps"


def _quantiles(c: dict[str, float], name: str, values: np.ndarray | None) -> None:
    if values is not None and values.size:
        c[f"{name}_q50"] = float(np.quantile(values, 0.5))
        c[f"{name}_q90"] = float(np.quantile(values, 0.9))
        c[f"{name}_max"] = float(np.max(values))


def _step_constants(df: pd.DataFrame, prefix: str, q: float) -> dict[str, float]:
    c: dict[str, float] = {}
    _quantiles(c, "L_lip", finite_values(df, f"{prefix}/smooth_lip"))
    eff = defined_smooth_eff(df, prefix)
    _quantiles(c, "L_eff", None if eff is None else eff[np.isfinite(eff)])
    path = path_smoothness(df, prefix) if present(df, f"{prefix}/smooth_lip") else None
    if path is not None:
        c["L_path"] = path
    if present(df, f"{prefix}/grad_norm", f"{prefix}/smooth_lip"):
        g, s = finite(*rows(df, f"{prefix}/grad_norm", f"{prefix}/smooth_lip"))
        if g.size:
            l0, l1 = quantile_regression_line(g, s, q)
            c["L0"], c["L1"] = l0, l1
            constant = pinball_loss(s - np.quantile(s, q), q)
            if constant > 0:
                c["l0l1_r1"] = 1.0 - pinball_loss(s - (l0 + l1 * g), q) / constant
    suffix = scheme_suffix(prefix)
    return {f"{k}{suffix}": v for k, v in c.items()}


def _excess_rows(df: pd.DataFrame, *keys: str) -> list[np.ndarray] | None:
    """``keys`` on the rows where ``ref/excess`` exceeds its rounding (``ref/float_tol``)."""
    if not present(df, "ref/excess", *keys):
        return None
    block = df.assign(_tol=tolerance(df, "ref/float_tol"))
    excess, tol, *values = rows(block, "ref/excess", "_tol", *keys)
    keep = excess > tol
    return [excess[keep], *(v[keep] for v in values)]


X_STAR_CONSTANTS = ("gamma", "rho", "pl", "pl_raw")
"""The constants measured against the reference point x* (``ref/*`` keys: the run's own end
point, or a replay's): they describe the path relative to where it ended, so they cannot be
measured early in a run (:func:`optprobe.analysis.early.early_constants` leaves them out)."""


def _reference_constants(df: pd.DataFrame, q: float) -> dict[str, float]:
    c: dict[str, float] = {}
    ratio_rows = _excess_rows(df, "ref/lin")
    if ratio_rows is not None:
        (ratio,) = finite(ratio_rows[1] / ratio_rows[0])
        if ratio.size:
            c["gamma"] = float(np.quantile(ratio, 1.0 - q))
    if present(df, "ref/gap", "ref/dist"):
        block = df.assign(_tol=tolerance(df, "ref/float_tol"))
        gap, dist, tol = rows(block, "ref/gap", "ref/dist", "_tol")
        (weak,) = finite(np.asarray(weak_convexity(gap, dist, tol), dtype=float))
        if weak.size:
            c["rho"] = float(np.quantile(weak, q))
    corrected = _excess_rows(df, "noise/grad_sq_norm_unbiased")
    if corrected is not None:
        (pl,) = finite(corrected[1] / (2.0 * corrected[0]))
        if pl.size:
            c["pl"] = float(np.quantile(pl, 1.0 - q))
    raw = _excess_rows(df, "ref/pl") if present(df, "ref/excess") else None
    pl_raw = finite(raw[1])[0] if raw is not None else finite_values(df, "ref/pl")
    if pl_raw is not None and np.any(pl_raw > 0):
        c["pl_raw"] = float(np.quantile(pl_raw[pl_raw > 0], 1.0 - q))
    return c


def _noise_constants(df: pd.DataFrame, q: float) -> dict[str, float]:
    c: dict[str, float] = {}
    cov = finite_values(df, "noise/trace_cov")
    if cov is not None:
        c["sigma_sq"] = float(np.quantile(cov, q))
    if present(df, "noise/grad_sq_norm", "noise/trace_cov"):
        g2, cov2 = finite(*rows(df, "noise/grad_sq_norm", "noise/trace_cov"))
        if g2.size:
            c["sigma0_sq"], c["sigma1_sq"] = quantile_regression_line(g2, cov2, q)
    lam = finite_values(df, LAMBDA_MAX_KEY)
    if lam is not None:
        c["lambda_max_max"] = float(np.max(lam))
    return c


def run_constants(df: pd.DataFrame, q: float) -> dict[str, float]:
    """The constants of one run (rows in step order), each omitted when its inputs are missing.

    - ``L_lip_q50/q90/max``: quantiles and max of ``smooth_lip``; ``L_eff_*`` the same of the
      defined ``smooth_eff`` (rounding-noise steps left out); ``L_path``: the path L.
    - ``L0``, ``L1``: the quantile-q line of ``smooth_lip`` on ``grad_norm``; ``l0l1_r1``:
      Koenker and Machado's R¹(q) = 1 − pinball loss of that line / pinball loss of the q
      quantile of ``smooth_lip`` (the constant-only fit it contains), in [0, 1]: the share
      of the q-quantile loss the ‖g‖ term removes (a squared-error R² of a quantile line is
      negative by construction on skewed clouds). (All of these also with ``_fresh`` for the
      fresh-batch keys.)
    - ``gamma``: the (1 − q) quantile of the per-step ratio ⟨g_t, x_t − x*⟩ / (f_t(x_t) −
      f_t(x*)) over steps whose excess exceeds ``ref/float_tol`` (the quasar constant).
    - ``rho``: the q quantile of ``weak_cvx`` (0 where the gap is within ``float_tol``).
    - ``pl``: the (1 − q) quantile of (‖g_t‖² − tr Σ/B) / (2 (f_t(x_t) − f_t(x*))) over the
      steps on which the noise probe ran (``noise/grad_sq_norm_unbiased``; may be ≤ 0 where
      the gradient is below its noise level); ``pl_raw``: the same quantile of the positive
      ``ref/pl`` values (the raw minibatch ‖g_t‖², biased up by the noise).
    - ``sigma_sq``: q quantile of ``noise/trace_cov``; ``sigma0_sq``, ``sigma1_sq``: the
      quantile-q line of ``trace_cov`` on ``grad_sq_norm``; ``lambda_max_max``.
    """
    c: dict[str, float] = {}
    for prefix in SCHEMES.values():
        c.update(_step_constants(df, prefix, q))
    c.update(_reference_constants(df, q))
    c.update(_noise_constants(df, q))
    return c
