"""Per-run verdicts: on what fraction of probed steps each assumption held, fitted constants,
and skip counts, computed from a run's logged metrics (one row per optimizer step).

Sign checks (``inst_gap``, ``inst_gap_old``, ``descent_bound``, ``ref_gap``) count the probed
steps on which the inequality held. Fitted-constant forms (``l0l1_smooth``,
``bounded_variance``, ``affine_variance``) are judged out of sample on interleaved blocks
(:mod:`optprobe.analysis.fits`): the step-ordered probed steps are cut into 10 blocks, the
constants are fitted at quantile q on the even blocks and "held" counts the steps of the odd
blocks that satisfy the inequality with those constants. Every fraction comes with a 95%
Wilson interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from optprobe.analysis.fits import interleaved_split
from optprobe.analysis.stats import quantile_regression_line, wilson_interval
from optprobe.assumptions import ASSUMPTIONS, Assumption

__all__ = [
    "CONFIDENCE",
    "AssumptionVerdict",
    "RunVerdict",
    "read_metrics_csv",
    "verdict_from_metrics",
    "verdict_table",
]

CONFIDENCE = 0.95
"""Confidence level of the Wilson interval reported with every fraction."""

FAMILY_MAIN_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "step": "step/loss_change",
        "ref": "ref/gap",
        "noise": "noise/trace_cov",
        "curv": "curv/lambda_max",
    }
)
"""Probe family -> the key whose non-NaN rows count the family's probed steps."""

# Relative slack when checking a value against a fitted bound, so that a point lying exactly on
# the fitted line (up to solver round-off) counts as covered.
_FIT_RTOL = 1e-7


@dataclass
class AssumptionVerdict:
    """How often one assumption held: ``held`` of ``checked`` probed steps, the fraction and
    its Wilson interval (NaN when nothing was checked)."""

    assumption: str
    label: str
    held: int
    checked: int
    fraction: float
    ci_low: float
    ci_high: float


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _none_to_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


@dataclass
class RunVerdict:
    """Verdicts of one run: per-assumption fractions, fitted constants (see
    ``verdict_from_metrics``), skipped-step counts and probed-step counts per probe family."""

    assumptions: list[AssumptionVerdict] = field(default_factory=list)
    constants: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    probed: dict[str, int] = field(default_factory=dict)

    def get(self, assumption: str) -> AssumptionVerdict | None:
        """The verdict for assumption id ``assumption``, or None when it was not judged."""
        for verdict in self.assumptions:
            if verdict.assumption == assumption:
                return verdict
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN written as None)."""
        return {
            "assumptions": [
                {k: _nan_to_none(v) for k, v in asdict(a).items()} for a in self.assumptions
            ],
            "constants": {k: _nan_to_none(float(v)) for k, v in self.constants.items()},
            "skipped": {k: int(v) for k, v in self.skipped.items()},
            "probed": {k: int(v) for k, v in self.probed.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunVerdict:
        """Inverse of ``to_dict`` (None read back as NaN)."""
        assumptions = [
            AssumptionVerdict(
                assumption=str(a["assumption"]),
                label=str(a["label"]),
                held=int(a["held"]),
                checked=int(a["checked"]),
                fraction=_none_to_nan(a["fraction"]),
                ci_low=_none_to_nan(a["ci_low"]),
                ci_high=_none_to_nan(a["ci_high"]),
            )
            for a in data.get("assumptions", [])
        ]
        return cls(
            assumptions=assumptions,
            constants={k: _none_to_nan(v) for k, v in data.get("constants", {}).items()},
            skipped={k: int(v) for k, v in data.get("skipped", {}).items()},
            probed={k: int(v) for k, v in data.get("probed", {}).items()},
        )


# --------------------------------------------------------------------------- reading


def read_metrics_csv(path: str | PathLike[str]) -> pd.DataFrame:
    """Read a run's ``metrics.csv`` as numbers (empty cells NaN), rows sorted by ``step``.

    Columns holding no number at all but some text are dropped.
    """
    raw = pd.read_csv(path)
    if "step" not in raw.columns:
        raise ValueError(f"{path}: no 'step' column")
    columns = {}
    for name in raw.columns:
        values = pd.to_numeric(raw[name], errors="coerce")
        if values.notna().any() or raw[name].isna().all():
            columns[name] = values.astype(float)
    df = pd.DataFrame(columns, index=raw.index)
    return df.sort_values("step", kind="mergesort").reset_index(drop=True)


# --------------------------------------------------------------------------- helpers


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    if "step" in df.columns:
        return df.sort_values("step", kind="mergesort").reset_index(drop=True)
    return df.reset_index(drop=True)


def _present(df: pd.DataFrame, *keys: str) -> bool:
    return all(k in df.columns and df[k].notna().any() for k in keys)


def _rows(df: pd.DataFrame, *keys: str) -> list[np.ndarray]:
    """The values of ``keys`` (as float arrays, in step order) on rows where none is NaN."""
    block = df[list(keys)].apply(pd.to_numeric, errors="coerce").astype(float)
    block = block[block.notna().all(axis=1)]
    return [block[k].to_numpy() for k in keys]


def _finite(*arrays: np.ndarray) -> list[np.ndarray]:
    keep = np.ones(arrays[0].shape, dtype=bool)
    for a in arrays:
        keep &= np.isfinite(a)
    return [a[keep] for a in arrays]


def _covered(values: np.ndarray, bound: np.ndarray | float) -> np.ndarray:
    """values <= bound, with a small relative slack for points on a fitted line."""
    bound = np.asarray(bound, dtype=float)
    return values <= bound + _FIT_RTOL * np.abs(bound)


def _verdict(assumption: Assumption, held: np.ndarray) -> AssumptionVerdict:
    n_held, n = int(np.count_nonzero(held)), int(held.size)
    low, high = wilson_interval(n_held, n, CONFIDENCE)
    return AssumptionVerdict(
        assumption=assumption.id,
        label=assumption.label,
        held=n_held,
        checked=n,
        fraction=n_held / n if n else float("nan"),
        ci_low=low,
        ci_high=high,
    )


# A fit takes (x, y) of the fitting blocks and returns a function bound(x) for the checked ones.
_Fit = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray] | None]


def _out_of_sample(
    assumption: Assumption, x: np.ndarray, y: np.ndarray, fit: _Fit
) -> AssumptionVerdict | None:
    """Fit on the even interleaved blocks of the (step-ordered) pairs, count the pairs of the
    odd blocks on or under the fitted bound (``fits.interleaved_split``)."""
    fit_idx, check_idx = interleaved_split(x.size)
    if fit_idx.size == 0 or check_idx.size == 0:
        return None
    bound = fit(x[fit_idx], y[fit_idx])
    if bound is None:
        return None
    x_test, y_test = x[check_idx], y[check_idx]
    return _verdict(assumption, _covered(y_test, bound(x_test)))


def _line_fit(q: float) -> _Fit:
    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
        xf, yf = _finite(x, y)
        if xf.size == 0:
            return None
        a, b = quantile_regression_line(xf, yf, q)
        return lambda xs: a + b * xs

    return fit


def _constant_fit(q: float) -> _Fit:
    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
        (yf,) = _finite(y)
        if yf.size == 0:
            return None
        level = float(np.quantile(yf, q))
        return lambda xs: np.full(xs.shape, level)

    return fit


# --------------------------------------------------------------------------- verdicts


def _sign_check(df: pd.DataFrame, assumption: Assumption) -> AssumptionVerdict:
    """Held on each probed step (rows where every key was logged), within the losses'
    rounding (the family's ``float_tol``; 0 for runs logged without it)."""
    rows = df[df[list(assumption.keys)].notna().all(axis=1)]
    values = {k: rows[k] for k in assumption.keys}
    tol_key = assumption.tolerance_key
    values[tol_key] = rows[tol_key].fillna(0.0) if tol_key in rows.columns else 0.0
    return _verdict(assumption, np.asarray(assumption.held(values), dtype=bool))


def _fitted_form(df: pd.DataFrame, assumption: Assumption, q: float) -> AssumptionVerdict | None:
    """Constants fitted at quantile q on the even interleaved blocks of the probed steps,
    checked on the odd ones: ``y <= c`` without an x key, else ``y <= c0 + c1 x``."""
    x_key, y_key, _ = assumption.fit
    if x_key is None:
        (y,) = _rows(df, y_key)
        return _out_of_sample(assumption, y, y, _constant_fit(q))
    x, y = _rows(df, x_key, y_key)
    return _out_of_sample(assumption, x, y, _line_fit(q))


def _assumption_verdicts(df: pd.DataFrame, q: float) -> list[AssumptionVerdict]:
    """One verdict per registry assumption whose keys the run logged, in registry order."""
    out: list[AssumptionVerdict | None] = []
    for assumption in ASSUMPTIONS.values():
        if not _present(df, *assumption.keys):
            continue
        if assumption.kind == "sign":
            out.append(_sign_check(df, assumption))
        else:
            out.append(_fitted_form(df, assumption, q))
    return [v for v in out if v is not None]


def _finite_values(df: pd.DataFrame, key: str) -> np.ndarray | None:
    if key not in df.columns:
        return None
    (values,) = _finite(*_rows(df, key))
    return values if values.size else None


def _constants(df: pd.DataFrame, q: float) -> dict[str, float]:
    c: dict[str, float] = {}
    for prefix, key in (("L_lip", "step/smooth_lip"), ("L_eff", "step/smooth_eff")):
        values = _finite_values(df, key)
        if values is not None:
            c[f"{prefix}_q50"] = float(np.quantile(values, 0.5))
            c[f"{prefix}_q90"] = float(np.quantile(values, 0.9))
            c[f"{prefix}_max"] = float(np.max(values))
    if _present(df, "step/grad_norm", "step/smooth_lip"):
        g, s = _finite(*_rows(df, "step/grad_norm", "step/smooth_lip"))
        if g.size:
            l0, l1 = quantile_regression_line(g, s, q)
            c["L0"], c["L1"] = l0, l1
            total = float(np.sum((s - s.mean()) ** 2))
            if total > 0:
                c["l0l1_r2"] = 1.0 - float(np.sum((s - (l0 + l1 * g)) ** 2)) / total
    ratio = _finite_values(df, "ref/ratio")
    if ratio is not None:
        c["gamma"] = float(ratio[-1])
    weak = _finite_values(df, "ref/weak_cvx")
    if weak is not None:
        c["rho"] = float(np.quantile(weak, q))
    pl = _finite_values(df, "ref/pl")
    if pl is not None and np.any(pl > 0):
        c["pl"] = float(np.quantile(pl[pl > 0], 1.0 - q))
    cov = _finite_values(df, "noise/trace_cov")
    if cov is not None:
        c["sigma_sq"] = float(np.quantile(cov, q))
    if _present(df, "noise/grad_sq_norm", "noise/trace_cov"):
        g2, cov2 = _finite(*_rows(df, "noise/grad_sq_norm", "noise/trace_cov"))
        if g2.size:
            c["sigma0_sq"], c["sigma1_sq"] = quantile_regression_line(g2, cov2, q)
    lam = _finite_values(df, "curv/lambda_max")
    if lam is not None:
        c["lambda_max_max"] = float(np.max(lam))
    return c


def verdict_from_metrics(df: pd.DataFrame, quantile: float = 0.95) -> RunVerdict:
    """Verdicts of one run from its metrics table (one row per step, NaN where not measured).

    Assumptions whose columns are absent or all NaN are left out, as are fitted-constant forms
    with fewer than two probed steps. NaN rows of a key are ignored; fits and quantiles also
    ignore infinite values. Constants (each omitted when its inputs are missing):

    - ``L_lip_q50``, ``L_lip_q90``, ``L_lip_max``: median, 90% quantile and max of
      ``step/smooth_lip``; ``L_eff_*`` the same of ``step/smooth_eff`` (both in loss per
      squared parameter distance, like a Hessian norm).
    - ``L0``, ``L1``: the quantile-q line of ``smooth_lip`` on ``grad_norm`` (a, b >= 0);
      ``l0l1_r2``: 1 - sum (s - s_hat)^2 / sum (s - mean s)^2 of that line (may be negative).
    - ``gamma``: last ``ref/ratio``; ``rho``: q quantile of ``ref/weak_cvx``; ``pl``: the
      (1 - q) quantile of the positive ``ref/pl`` values (a lower bound holding on a fraction q).
    - ``sigma_sq``: q quantile of ``noise/trace_cov``; ``sigma0_sq``, ``sigma1_sq``: the
      quantile-q line of ``trace_cov`` on ``grad_sq_norm``.
    - ``lambda_max_max``: max of ``curv/lambda_max``.

    ``skipped`` is the max of ``<family>/skipped`` and ``probed`` the number of non-NaN rows of
    each family's main key (``FAMILY_MAIN_KEYS``), for the families whose columns exist.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    df = _ordered(df)
    skipped: dict[str, int] = {}
    probed: dict[str, int] = {}
    for family, key in FAMILY_MAIN_KEYS.items():
        skip_key = f"{family}/skipped"
        if _present(df, skip_key):
            skipped[family] = int(np.nanmax(_rows(df, skip_key)[0]))
        if key in df.columns:
            probed[family] = int(df[key].notna().sum())
    return RunVerdict(
        assumptions=_assumption_verdicts(df, quantile),
        constants=_constants(df, quantile),
        skipped=skipped,
        probed=probed,
    )


# --------------------------------------------------------------------------- table


def _fmt_fraction(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def verdict_table(verdict: RunVerdict) -> str:
    """A fixed-width text table: each assumption's held/checked, fraction and 95% interval,
    then the fitted constants, the skipped and the probed step counts."""
    rows = [
        (
            a.label,
            f"{a.held}/{a.checked}",
            _fmt_fraction(a.fraction),
            f"[{_fmt_fraction(a.ci_low)}, {_fmt_fraction(a.ci_high)}]",
        )
        for a in verdict.assumptions
    ]
    header = ("assumption", "held/checked", "fraction", f"{CONFIDENCE:.0%} CI")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r: tuple[str, str, str, str]) -> str:
        return f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}"

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows] if rows else ["(no assumption could be checked)"]
    if verdict.constants:
        out += ["", "constants"]
        width = max(len(k) for k in verdict.constants)
        out += [f"  {k:<{width}}  {v:.4g}" for k, v in verdict.constants.items()]
    for title, counts in (("skipped steps", verdict.skipped), ("probed steps", verdict.probed)):
        if counts:
            out += ["", f"{title}: " + ", ".join(f"{k}={v}" for k, v in counts.items())]
    return "\n".join(out)
