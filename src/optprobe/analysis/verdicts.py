"""Per-run verdicts: on what fraction of probed steps each assumption variant held, fitted
constants, skip counts, computed from a run's logged metrics (one row per optimizer step).

One entry per registry assumption *and* variant (``optprobe.assumptions``: the L of the
descent bound, the batch scheme, valid / valid and informative), with its verdict id, e.g.
``descent_bound:path:same_batch``. Sign checks count the scored probed steps on which the
inequality held (the descent bound scores the steps that made progress and counts the others
apart) and judge the summed version too; fitted-constant forms (``l0l1_smooth``,
``bounded_variance``, ``affine_variance``) are judged out of sample on interleaved blocks
(:mod:`optprobe.analysis.fits`: fitted at quantile q on the even blocks of the step-ordered
probed steps, counted on the odd ones), each against its null baseline (``null_method``,
``null_fraction``, ``informative``: a fitted form holds on about q of the steps by
construction); sign checks say they have none. Every fraction comes with a
per-run interval that respects the autocorrelation of consecutive steps
(:mod:`optprobe.analysis.run_intervals`), its method named in the entry.

``verdicts.json`` (``RunVerdict.to_dict``)::

    {"assumptions": [{"id", "assumption", "label", "held", "checked", "fraction",
                      "ci_low", "ci_high", "interval_method", "variant", "headline",
                      "no_progress", "sum_lhs", "sum_rhs", "sum_held", "note",
                      "null_method", "null_fraction", "informative", "decomposition"}, ...],
     "constants": {name: value}, "skipped": {family: n}, "probed": {family: n},
     "undefined": {key: n}}

NaN is written as null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from optprobe.analysis.columns import present, rows
from optprobe.analysis.run_constants import run_constants, undefined_smooth_eff
from optprobe.analysis.run_intervals import METHOD as INTERVAL_METHOD
from optprobe.analysis.variant_checks import CONFIDENCE, AssumptionVerdict, variant_verdicts
from optprobe.assumptions import ASSUMPTIONS, SCHEMES

__all__ = [
    "CONFIDENCE",
    "AssumptionVerdict",
    "RunVerdict",
    "read_metrics_csv",
    "verdict_from_metrics",
    "verdict_table",
]

FAMILY_MAIN_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "step": "step/loss_change",
        "step_fresh": "step_fresh/loss_change",
        "ref": "ref/gap",
        "noise": "noise/trace_cov",
        "curv": "curv/lambda_max",
    }
)
"""Probe family (key prefix) -> the key whose non-NaN rows count the family's probed steps."""


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _none_to_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _entry_from_dict(a: Mapping[str, Any]) -> AssumptionVerdict:
    """One ``verdicts.json`` entry; entries written before variants existed (no ``id``) read
    as the headline of their assumption with the pooled Wilson interval they carried."""
    floats = {k: _none_to_nan(a.get(k)) for k in ("fraction", "ci_low", "ci_high")}
    sums = {k: (None if a.get(k) is None else float(a[k])) for k in ("sum_lhs", "sum_rhs")}
    return AssumptionVerdict(
        id=str(a.get("id", a["assumption"])),
        assumption=str(a["assumption"]),
        label=str(a["label"]),
        held=int(a["held"]),
        checked=int(a["checked"]),
        interval_method=str(a.get("interval_method", "wilson")),
        variant=dict(a.get("variant", {})),
        headline=bool(a.get("headline", True)),
        no_progress=None if a.get("no_progress") is None else int(a["no_progress"]),
        sum_held=None if a.get("sum_held") is None else bool(a["sum_held"]),
        note=str(a.get("note", "")),
        null_method=str(a.get("null_method", "")),
        null_fraction=None if a.get("null_fraction") is None else float(a["null_fraction"]),
        informative=None if a.get("informative") is None else bool(a["informative"]),
        decomposition=dict(a.get("decomposition") or {}),
        **floats,
        **sums,
    )


@dataclass
class RunVerdict:
    """Verdicts of one run: per-variant fractions, fitted constants (see
    ``run_constants``), skipped-step counts and probed-step counts per probe family, and per
    key the probed steps on which it was undefined (rounding floor: ``<prefix>/smooth_eff``)."""

    assumptions: list[AssumptionVerdict] = field(default_factory=list)
    constants: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    probed: dict[str, int] = field(default_factory=dict)
    undefined: dict[str, int] = field(default_factory=dict)

    def get(self, verdict_id: str) -> AssumptionVerdict | None:
        """The entry with id ``verdict_id``; given an assumption id, its first headline entry
        (the same-batch one when it ran). None when not judged."""
        for verdict in self.assumptions:
            if verdict.id == verdict_id:
                return verdict
        for verdict in self.assumptions:
            if verdict.assumption == verdict_id and verdict.headline:
                return verdict
        return None

    def headlines(self) -> list[AssumptionVerdict]:
        """The headline entries (one per assumption and batch scheme), in registry order."""
        return [a for a in self.assumptions if a.headline]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN written as None)."""
        return {
            "assumptions": [
                {k: _nan_to_none(v) for k, v in asdict(a).items()} for a in self.assumptions
            ],
            "constants": {k: _nan_to_none(float(v)) for k, v in self.constants.items()},
            "skipped": {k: int(v) for k, v in self.skipped.items()},
            "probed": {k: int(v) for k, v in self.probed.items()},
            "undefined": {k: int(v) for k, v in self.undefined.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunVerdict:
        """Inverse of ``to_dict`` (None read back as NaN)."""
        return cls(
            assumptions=[_entry_from_dict(a) for a in data.get("assumptions", [])],
            constants={k: _none_to_nan(v) for k, v in data.get("constants", {}).items()},
            skipped={k: int(v) for k, v in data.get("skipped", {}).items()},
            probed={k: int(v) for k, v in data.get("probed", {}).items()},
            undefined={k: int(v) for k, v in data.get("undefined", {}).items()},
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


# --------------------------------------------------------------------------- verdicts


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    if "step" in df.columns:
        return df.sort_values("step", kind="mergesort").reset_index(drop=True)
    return df.reset_index(drop=True)


def verdict_from_metrics(df: pd.DataFrame, quantile: float = 0.95) -> RunVerdict:
    """Verdicts of one run from its metrics table (one row per step, NaN where not measured).

    Variants whose columns are absent or all NaN are left out, as are fitted-constant forms
    with fewer than two probed steps. NaN rows of a key are ignored; fits and quantiles also
    ignore infinite values. Constants: see :func:`optprobe.analysis.run_constants.run_constants`.

    ``skipped`` is the max of ``<family>/skipped`` and ``probed`` the number of non-NaN rows of
    each family's main key (``FAMILY_MAIN_KEYS``), for the families whose columns exist;
    ``undefined`` counts, per scheme, the probed steps whose ``smooth_eff`` is undefined.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    df = _ordered(df)
    skipped: dict[str, int] = {}
    probed: dict[str, int] = {}
    for family, key in FAMILY_MAIN_KEYS.items():
        skip_key = f"{family}/skipped"
        if present(df, skip_key):
            skipped[family] = int(np.nanmax(rows(df, skip_key)[0]))
        if key in df.columns:
            probed[family] = int(df[key].notna().sum())
    undefined = {}
    for prefix in SCHEMES.values():
        count = undefined_smooth_eff(df, prefix)
        if count is not None:
            undefined[f"{prefix}/smooth_eff"] = count
    return RunVerdict(
        assumptions=variant_verdicts(df, quantile),
        constants=run_constants(df, quantile),
        skipped=skipped,
        probed=probed,
        undefined=undefined,
    )


# --------------------------------------------------------------------------- table


def _fmt_fraction(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def _summed(a: AssumptionVerdict) -> str:
    if a.sum_held is None:
        return "-"
    text = "held" if a.sum_held else "failed"
    if a.sum_lhs is not None and a.sum_rhs is not None:
        text += f" ({a.sum_lhs:.3g} vs {a.sum_rhs:.3g})"
    return text


def _null(a: AssumptionVerdict) -> str:
    """The null column: its fraction and whether the verdict beats it (fitted forms), or "-"."""
    if a.informative is None:
        return "-"
    verdict = "informative" if a.informative else "UNINFORMATIVE"
    return f"{_fmt_fraction(_none_to_nan(a.null_fraction))} {verdict}"


def _decomposed(a: AssumptionVerdict) -> str:
    """``AssumptionVerdict.decomposition`` in words: the descent bound's two conditions, or
    the fraction held per third of the run (convexity towards x*)."""
    d = a.decomposition
    if "scored" not in d:
        phases = ", ".join(f"{k} {_fmt_fraction(_none_to_nan(v))}" for k, v in d.items())
        return f"held by thirds of the run: {phases} (late steps are near x* by construction)"
    n = d["scored"]
    text = (
        f"the bound is valid (D_t ≤ bound) on {d['bound_valid']}/{n} scored steps and predicts "
        f"a decrease (L < 2|⟨g,Δ⟩|/‖Δ‖²) on {d['predicts_decrease']}/{n}"
    )
    if n and d["bound_valid"] == n:
        text += ": here the verdict is exactly that step-size condition"
    fraction = _fmt_fraction(_none_to_nan(d.get("fraction_of_probed")))
    return f"{text}; held on {fraction} of all probed steps (no-progress steps as not held)"


def _row(a: AssumptionVerdict) -> tuple[str, ...]:
    apart = "" if a.no_progress is None else f"{a.no_progress}"
    return (
        f"  {a.id}",
        f"{a.held}/{a.checked}",
        _fmt_fraction(a.fraction),
        f"[{_fmt_fraction(a.ci_low)}, {_fmt_fraction(a.ci_high)}]",
        _null(a),
        apart,
        _summed(a),
    )


def _assumption_rows(verdict: RunVerdict) -> list[tuple[str, ...]]:
    """One title line per assumption (its registry label), then one row per variant."""
    out: list[tuple[str, ...]] = []
    for assumption in ASSUMPTIONS.values():
        entries = [a for a in verdict.assumptions if a.assumption == assumption.id]
        if entries:
            out.append((assumption.label, "", "", "", "", "", ""))
            out += [_row(a) for a in entries]
    known = set(ASSUMPTIONS)
    out += [_row(a) for a in verdict.assumptions if a.assumption not in known]
    return out


def verdict_table(verdict: RunVerdict) -> str:
    """A fixed-width text table: per assumption (its label), one row per variant id with
    held/checked, the fraction and its per-run interval, the steps without progress set apart
    and the summed version (Σ lhs vs Σ rhs of the inequality lhs ≤ rhs); then the notes, the
    fitted constants, the skipped, undefined and probed step counts."""
    rows_ = _assumption_rows(verdict)
    methods = sorted({a.interval_method for a in verdict.assumptions}) or [INTERVAL_METHOD]
    header = (
        "assumption / verdict id",
        "held/checked",
        "fraction",
        f"{CONFIDENCE:.0%} interval ({', '.join(methods)})",
        "null (fitted forms)",
        "D>=0 apart",
        "summed (lhs vs rhs)",
    )
    widths = [max(len(r[i]) for r in [header, *rows_]) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        if not any(r[1:]):
            return r[0].ljust(sum(widths) + 2 * (len(widths) - 1))
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:-1])]
        return "  ".join([*cells, r[-1].ljust(widths[-1])])

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows_] if rows_ else ["(no assumption could be checked)"]
    notes = [f"  {a.id}: {a.note}" for a in verdict.assumptions if a.note]
    notes += [f"  {a.id}: {_decomposed(a)}" for a in verdict.assumptions if a.decomposition]
    nulls = sorted({a.null_method for a in verdict.assumptions if a.informative is not None})
    notes += [f"  null of the fitted forms: {m}" for m in nulls]
    if notes:
        out += ["", "notes", *notes]
    if verdict.constants:
        out += ["", "constants"]
        width = max(len(k) for k in verdict.constants)
        out += [f"  {k:<{width}}  {v:.4g}" for k, v in verdict.constants.items()]
    for title, counts in (
        ("skipped steps", verdict.skipped),
        ("undefined (rounding floor)", verdict.undefined),
        ("probed steps", verdict.probed),
    ):
        if counts:
            out += ["", f"{title}: " + ", ".join(f"{k}={v}" for k, v in counts.items())]
    return "\n".join(out)
