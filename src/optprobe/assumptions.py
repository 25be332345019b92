"""The assumptions registry: every assumption or proof identity optprobe judges, defined once.

Each record says what the assumption is (label, condition in words and symbols), which metric
keys it reads and which probe family logs them, and how a step is judged: a *sign* check
holds on a probed step when its inequality does (within the float rounding of the losses,
``<family>/float_tol``); a *fitted* form fits constants at quantile q on half of the probed
steps and counts the other half (out of sample). Everything reads this module: the probes'
running fractions (``<family>/frac_<id>_held``), ``summary.json``, the job and sweep tables
(``held:<id>``), ``verdicts.json``, the cross-run analysis, the report's glossary, W&B
summary values (``verdict/<id>``), README's assumption table and docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

Values = Mapping[str, Any]  # metric key -> a float (one step) or an array/Series (many steps)


@dataclass(frozen=True)
class Assumption:
    """One assumption or identity.

    ``keys``: the metric keys it reads. ``holds(values, tol)``: per-step verdict of a sign
    check from those keys and the rounding tolerance (floats or arrays alike). Fitted forms
    have ``fit = (x key or None, y key, constant names)``: ``y <= c`` (one constant) or
    ``y <= c0 + c1 * x`` (two). ``finding``: the study finding it bears on
    (``smoothness`` / ``convexity``) or None.
    """

    id: str
    label: str
    condition: str
    symbols: str
    family: str
    keys: tuple[str, ...]
    kind: str  # "sign" | "fitted"
    finding: str | None = None
    holds: Callable[[Values, Any], Any] | None = None
    fit: tuple[str | None, str, tuple[str, ...]] | None = None

    @property
    def tolerance_key(self) -> str:
        """The key holding the losses' rounding (nats) within which a sign check holds."""
        return f"{self.family}/float_tol"

    @property
    def running_key(self) -> str:
        """The probe's running fraction of probed steps on which it held so far."""
        return f"{self.family}/frac_{self.id}_held"

    def held(self, values: Values) -> Any:
        """Whether a sign check held, from logged values (scalars or aligned arrays)."""
        if self.holds is None:
            raise TypeError(f"{self.id} is a fitted form; judge it with a fit, not per step")
        return self.holds(values, values.get(self.tolerance_key, 0.0))


def _descent_bound_holds(v: Values, tol: Any) -> Any:
    bound = v["step/descent_bound"]
    return (bound >= v["step/loss_change"] - tol) & (bound < 0)


_ALL = (
    Assumption(
        id="inst_gap",
        label="convex along the step, from x_{t+1}",
        condition="the loss change is at most the linear term at the new point",
        symbols="D_t − ⟨g⁺_t, Δ_t⟩ ≤ 0",
        family="step",
        keys=("step/inst_gap",),
        kind="sign",
        finding="convexity",
        holds=lambda v, tol: v["step/inst_gap"] <= tol,
    ),
    Assumption(
        id="inst_gap_old",
        label="convex along the step, from x_t",
        condition="the loss change is at least the linear term at the old point",
        symbols="D_t − ⟨g_t, Δ_t⟩ ≥ 0",
        family="step",
        keys=("step/inst_gap_old",),
        kind="sign",
        finding="convexity",
        holds=lambda v, tol: v["step/inst_gap_old"] >= -tol,
    ),
    Assumption(
        id="descent_bound",
        label="L-smoothness predicts the progress",
        condition="the descent lemma with a global L bounds the loss change and predicts a "
        "decrease",
        symbols="D_t ≤ ⟨g_t, Δ_t⟩ + (L/2)‖Δ_t‖² < 0",
        family="step",
        keys=("step/descent_bound", "step/loss_change"),
        kind="sign",
        finding="smoothness",
        holds=_descent_bound_holds,
    ),
    Assumption(
        id="ref_gap",
        label="convex towards x*",
        condition="the excess loss over the reference point x* is at most the linear term",
        symbols="f_t(x_t) − f_t(x*) − ⟨g_t, x_t − x*⟩ ≤ 0",
        family="ref",
        keys=("ref/gap",),
        kind="sign",
        finding="convexity",
        holds=lambda v, tol: v["ref/gap"] <= tol,
    ),
    Assumption(
        id="l0l1_smooth",
        label="(L0,L1)-smoothness",
        condition="the local smoothness is covered by a line in the gradient norm, with L0, L1 "
        "fitted at quantile q on half of the probed steps and checked on the other half",
        symbols="smooth_lip_t ≤ L0 + L1‖g_t‖",
        family="step",
        keys=("step/grad_norm", "step/smooth_lip"),
        kind="fitted",
        finding="smoothness",
        fit=("step/grad_norm", "step/smooth_lip", ("L0", "L1")),
    ),
    Assumption(
        id="bounded_variance",
        label="bounded variance",
        condition="the trace of the per-example gradient covariance stays below a constant "
        "σ², fitted at quantile q on half of the probed steps and checked on the other half",
        symbols="tr Σ_t ≤ σ²",
        family="noise",
        keys=("noise/trace_cov",),
        kind="fitted",
        fit=(None, "noise/trace_cov", ("sigma_sq",)),
    ),
    Assumption(
        id="affine_variance",
        label="affine variance",
        condition="the covariance trace is covered by a line in the squared gradient norm, "
        "with σ0², σ1² fitted at quantile q on half of the probed steps, checked on the other",
        symbols="tr Σ_t ≤ σ0² + σ1²‖G_t‖²",
        family="noise",
        keys=("noise/grad_sq_norm", "noise/trace_cov"),
        kind="fitted",
        fit=("noise/grad_sq_norm", "noise/trace_cov", ("sigma0_sq", "sigma1_sq")),
    ),
)

ASSUMPTIONS: Mapping[str, Assumption] = MappingProxyType({a.id: a for a in _ALL})
"""Assumption id -> record, in reporting order."""


def of_family(family: str, kind: str | None = None) -> list[Assumption]:
    """The assumptions whose keys a probe family logs (optionally of one kind)."""
    return [a for a in _ALL if a.family == family and (kind is None or a.kind == kind)]


def markdown_table() -> str:
    """README's and docs/metrics.md's table of assumptions, generated from the registry."""
    lines = [
        "| id | assumption | held on a probed step when | keys | judged |",
        "|---|---|---|---|---|",
    ]
    for a in _ALL:
        judged = "sign, within `float_tol`" if a.kind == "sign" else "fitted at q, out of sample"
        keys = ", ".join(f"`{k}`" for k in a.keys)
        lines.append(f"| `{a.id}` | {a.label} | {a.symbols}: {a.condition} | {keys} | {judged} |")
    return "\n".join(lines)


BEGIN, END = "<!-- assumptions:begin", "<!-- assumptions:end -->"


def with_table(text: str) -> str:
    """``text`` (README.md, docs/metrics.md) with the generated table between its markers."""
    start = text.index(BEGIN)
    start = text.index("\n", start) + 1
    end = text.index(END)
    return text[:start] + markdown_table() + "\n" + text[end:]


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:]:  # python -m optprobe.assumptions README.md docs/metrics.md
        path = Path(name)
        path.write_text(with_table(path.read_text()))
    if not sys.argv[1:]:
        print(markdown_table())
