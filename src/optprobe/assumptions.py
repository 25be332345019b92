"""The assumptions registry: every assumption or proof identity optprobe judges, defined once.

Each record says what the assumption is (label, condition in words and symbols), which metric
keys it reads and which probe family logs them, and how a step is judged: a *sign* check
holds on a probed step when its inequality does (within the float rounding of the losses,
``<family>/float_tol``); a *fitted* form fits constants at quantile q on half of the probed
steps and counts the other half (out of sample). Everything reads this module: the probes'
running fractions, ``summary.json``, the job and sweep tables (``held:<id>``),
``verdicts.json``, the cross-run analysis, the report's glossary, W&B summary values
(``verdict/<id>``), README's assumption table and docs/metrics.md.

Variants. An assumption is judged once per *variant*: one value on each of its axes (docs/
metrics.md §1, §1a):

- ``L`` (descent bound): ``path`` (hindsight: the run's max of max(smooth_lip, λ_max), λ_max
  left out when its HVPs ran on a subset of the batch; the headline), ``past`` (online: max
  of smooth_lip over earlier probed steps), ``local`` (directional: ``curv_dir`` where
  logged; never ``smooth_eff``, whose bound is D_t itself), ``hessian`` (the run's max of
  λ_max alone, in the optimizer's norm λ_max(P⁻¹H): an L_P that a few coordinates whose
  preconditioner is still at its floor ε cannot set through the dual-norm ratio).
- ``score`` (convexity along the step): ``valid`` (the identity holds; the headline) or
  ``valid_informative`` (it holds *and* certifies a decrease, ⟨g⁺_t, Δ_t⟩ < 0).
- ``geometry`` (descent bound, (L0,L1)-smoothness; docs/metrics.md §7): ``euclidean`` (‖·‖₂,
  the headline) or ``optimizer`` (the optimizer's own norm: ‖·‖_P with its diagonal
  preconditioner P, ℓ∞ for sign methods, spectral per matrix for Muon; keys with the suffix
  ``_P``, logged only for optimizers that have such a geometry, so not judged elsewhere). The
  ``local`` L has no ``optimizer`` variant: its bound ⟨g,Δ⟩ + ½ΔᵀHΔ is the same in every norm.
- ``scheme`` (every step-probe assumption): ``same_batch`` (keys ``step/*``) or
  ``fresh_batch`` (keys ``step_fresh/*``), two different quantities (``SCHEMES``).

A verdict's **id** is the assumption id followed by its axis values in the order ``L``,
``score``, ``geometry``, ``scheme``, joined by ``:`` — ``descent_bound:path:same_batch``,
``descent_bound:path:optimizer:same_batch``, ``inst_gap:valid_informative:fresh_batch``,
``inst_gap_old:same_batch``, ``ref_gap``, ``bounded_variance``. The value ``euclidean`` is
implicit (``IMPLICIT``): left out of ids, labels and the variant's axis values, so the ids of
the Euclidean verdicts are those they had before the geometry axis existed. The *headline* variants are those at the first value of every axis
but the scheme (one per assumption and scheme). The id never changes meaning: a new axis or
value gets a new id.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

Values = Mapping[str, Any]  # metric key -> a float (one step) or an array/Series (many steps)

SCHEMES: Mapping[str, str] = MappingProxyType({"same_batch": "step", "fresh_batch": "step_fresh"})
"""Batch scheme of the step probes -> the key prefix its probe logs under."""

AXES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "L": ("path", "past", "local", "hessian"),
        "score": ("valid", "valid_informative"),
        "geometry": ("euclidean", "optimizer"),
        "scheme": tuple(SCHEMES),
    }
)
"""Variant axis -> its values, the headline first; the axis order is the order in ids."""

AXIS_WORDS: Mapping[str, str] = MappingProxyType(
    {
        "path": "L = the run's max of smooth_lip and λ_max (hindsight)",
        "past": "L = max of smooth_lip over earlier probed steps (online)",
        "local": "L = curvature along the step (curv_dir; not judged where it is not logged)",
        "hessian": "L = the run's max of λ_max alone (Hessian-based; optimizer's norm: λ_max(P⁻¹H))",
        "valid": "valid",
        "valid_informative": "valid and informative",
        "optimizer": "in the optimizer's norm (‖·‖_P, ℓ∞ or spectral)",
        "same_batch": "same batch",
        "fresh_batch": "fresh batch",
    }
)
"""How each axis value reads in labels."""

IMPLICIT: Mapping[str, str] = MappingProxyType({"geometry": "euclidean"})
"""Axis -> the value left out of a variant's fields (ids, labels): the measurement every
variant made before the axis existed."""

GEOMETRY_SUFFIX = "_P"
"""Suffix of the keys measured in the optimizer's norm (``step/smooth_lip_P``...)."""

_SAME_IN_EVERY_GEOMETRY = (("L", "local"),)
"""Axis values whose check does not depend on the norm (no ``optimizer`` variant)."""

ONLINE_L = "past"
"""The one L choice a probe can compute while training (the others need the whole run)."""


@dataclass(frozen=True)
class Assumption:
    """One assumption or identity.

    ``keys``: the metric keys it reads (with the family's prefix). ``holds(values, tol)``:
    per-step verdict of a sign check from those keys and the rounding tolerance (floats or
    arrays alike); the summed version applies the same predicate to the sums over the run.
    Fitted forms have ``fit = (x key or None, y key, constant names)``: ``y <= c`` (one
    constant) or ``y <= c0 + c1 * x`` (two). ``finding``: the study finding it bears on
    (``smoothness`` / ``convexity``) or None. ``axes``: its variant axes (``AXES``).
    ``sides``: (lhs, rhs) keys of the inequality written lhs ≤ rhs, reported summed.
    ``informative``: the key whose negative value means the identity certifies a decrease
    (the ``valid_informative`` score). ``progress_key``: when set, a step is scored only if
    this key is negative (steps that made no progress are counted apart). ``per_choice``:
    keys that exist once per L choice (``<key>_<L>``). ``per_geometry``: keys measured in a
    norm, logged with the suffix ``_P`` in the optimizer's norm. ``duplicates``: the id of an
    assumption it nearly repeats; the two are not independent evidence.
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
    axes: tuple[str, ...] = ()
    sides: tuple[str, str] | None = None
    informative: str | None = None
    progress_key: str | None = None
    per_choice: tuple[str, ...] = ()
    per_geometry: tuple[str, ...] = ()
    duplicates: str | None = None

    @property
    def tolerance_key(self) -> str:
        """The key holding the losses' rounding (nats) within which a sign check holds."""
        return f"{self.family}/float_tol"

    def held(self, values: Values) -> Any:
        """Whether a sign check held, from logged values (scalars or aligned arrays)."""
        if self.holds is None:
            raise TypeError(f"{self.id} is a fitted form; judge it with a fit, not per step")
        return self.holds(values, values.get(self.tolerance_key, 0.0))

    def variants(self) -> list[Variant]:
        """Its variants, in reporting order (scheme outermost, then the other axes)."""
        ordered = sorted(self.axes, key=lambda a: (a != "scheme", list(AXES).index(a)))
        out = []
        for combo in itertools.product(*(AXES[a] for a in ordered)):
            chosen = dict(zip(ordered, combo))
            if chosen.get("geometry") == "optimizer" and any(
                chosen.get(axis) == value for axis, value in _SAME_IN_EVERY_GEOMETRY
            ):
                continue
            fields = ((a, chosen[a]) for a in AXES if a in chosen)
            out.append(Variant(self, tuple((a, v) for a, v in fields if IMPLICIT.get(a) != v)))
        return out


@dataclass(frozen=True)
class Variant:
    """One assumption judged one way: a value on each of its axes. Its keys are the
    assumption's, under the scheme's prefix and with the L choice's suffix."""

    assumption: Assumption
    fields: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        return ":".join([self.assumption.id, *(value for _, value in self.fields)])

    @property
    def variant(self) -> dict[str, str]:
        return dict(self.fields)

    def get(self, axis: str) -> str | None:
        return self.variant.get(axis)

    @property
    def headline(self) -> bool:
        """At the first value of every axis but the scheme."""
        return all(value == AXES[axis][0] for axis, value in self.fields if axis != "scheme")

    @property
    def decides(self) -> bool:
        """Whether the variant decides its study finding: the headline, and beside it the
        headline with the other score (``valid_informative``: an identity that holds only
        where it certifies no decrease is no evidence of convexity, so Finding 2 is decided
        on both scores)."""
        return all(
            value == AXES[axis][0] for axis, value in self.fields if axis not in ("scheme", "score")
        )

    @property
    def prefix(self) -> str:
        scheme = self.get("scheme")
        return SCHEMES[scheme] if scheme else self.assumption.family

    @property
    def label(self) -> str:
        words = [AXIS_WORDS[value] for _, value in self.fields]
        return f"{self.assumption.label} ({', '.join(words)})" if words else self.assumption.label

    @property
    def online(self) -> bool:
        """Whether a probe can judge it while training (every L choice but ``past`` needs the
        whole run)."""
        return self.get("L") in (None, ONLINE_L)

    def key(self, key: str) -> str:
        """The metric key this variant reads for the assumption's ``key``."""
        family, _, rest = key.partition("/")
        if family == self.assumption.family:
            key = f"{self.prefix}/{rest}"
        if rest and f"{family}/{rest}" in self.assumption.per_choice:
            key = f"{key}_{self.get('L')}"
        if rest and f"{family}/{rest}" in self.assumption.per_geometry:
            key += GEOMETRY_SUFFIX if self.get("geometry") == "optimizer" else ""
        return key

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.key(k) for k in self.assumption.keys)

    @property
    def tolerance_key(self) -> str:
        return self.key(self.assumption.tolerance_key)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every key a per-step check of this variant reads, under the assumption's own key
        names (its keys, the scoring and the informative key); ``key`` maps them."""
        a = self.assumption
        extra = [k for k in (a.progress_key, self._informative_key) if k is not None]
        return tuple(dict.fromkeys([*a.keys, *extra]).keys())

    @property
    def _informative_key(self) -> str | None:
        return self.assumption.informative if self.get("score") == "valid_informative" else None

    @property
    def running_key(self) -> str:
        """The probe's running fraction of scored steps on which it held so far."""
        words = [self.assumption.id, *(v for a, v in self.fields if a != "scheme")]
        return f"{self.prefix}/frac_{'_'.join(words)}_held"

    def base_values(self, logged: Values) -> dict[str, Any]:
        """``logged`` (keys as this variant logs them) under the assumption's own key names,
        with the tolerance (0 where it was not logged)."""
        out = {k: logged[self.key(k)] for k in self.inputs}
        out[self.assumption.tolerance_key] = logged.get(self.tolerance_key, 0.0)
        return out

    def scored(self, values: Values) -> Any:
        """Whether a step counts (values under the assumption's key names): steps without
        progress are set aside when the assumption is about predicting progress."""
        key = self.assumption.progress_key
        return True if key is None else values[key] < 0

    def held(self, values: Values) -> Any:
        """The sign check (and, for ``valid_informative``, the certified decrease) on values
        under the assumption's key names: per step, or the sums over a run."""
        held = self.assumption.held(values)
        key = self._informative_key
        return held if key is None else held & (values[key] < 0)

    def judge_step(self, logged: Values) -> bool | None:
        """One probed step from the values it logged (this variant's key names): whether it
        held, or None when a key is missing or the step is not scored."""
        if any(self.key(k) not in logged for k in self.inputs):
            return None
        values = self.base_values(logged)
        return bool(self.held(values)) if self.scored(values) else None


def _descent_bound_holds(v: Values, tol: Any) -> Any:
    bound = v["step/descent_bound"]
    return (bound >= v["step/loss_change"] - tol) & (bound < 0)


_ALL = (
    Assumption(
        id="inst_gap",
        label="convex along the step, from x_{t+1}",
        condition="the loss change is at most the linear term at the new point "
        "(valid_informative: and that term is negative, so the identity certifies a decrease)",
        symbols="D_t − ⟨g⁺_t, Δ_t⟩ ≤ 0",
        family="step",
        keys=("step/inst_gap",),
        kind="sign",
        finding="convexity",
        holds=lambda v, tol: v["step/inst_gap"] <= tol,
        axes=("score", "scheme"),
        sides=("step/loss_change", "step/lin_new"),
        informative="step/lin_new",
    ),
    Assumption(
        id="inst_gap_old",
        label="convex along the step, from x_t",
        condition="the loss change is at least the linear term at the old point (nearly the "
        "same test as inst_gap, the sign of the curvature along Δ_t: not independent evidence)",
        symbols="D_t − ⟨g_t, Δ_t⟩ ≥ 0",
        family="step",
        keys=("step/inst_gap_old",),
        kind="sign",
        finding="convexity",
        holds=lambda v, tol: v["step/inst_gap_old"] >= -tol,
        axes=("scheme",),
        sides=("step/lin_old", "step/loss_change"),
        duplicates="inst_gap",
    ),
    Assumption(
        id="descent_bound",
        label="L-smoothness predicts the progress",
        condition="on a step that made progress (D_t < 0; others counted apart), the descent "
        "lemma with the L of the variant bounds the loss change and predicts a decrease",
        symbols="D_t ≤ ⟨g_t, Δ_t⟩ + (L/2)‖Δ_t‖² < 0 (optimizer geometry: L_P, ‖Δ_t‖_P)",
        family="step",
        keys=("step/descent_bound", "step/loss_change"),
        kind="sign",
        finding="smoothness",
        holds=_descent_bound_holds,
        axes=("L", "geometry", "scheme"),
        sides=("step/loss_change", "step/descent_bound"),
        progress_key="step/loss_change",
        per_choice=("step/descent_bound",),
        per_geometry=("step/descent_bound",),
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
        sides=("ref/excess", "ref/lin"),
    ),
    Assumption(
        id="l0l1_smooth",
        label="(L0,L1)-smoothness",
        condition="the local smoothness is covered by a line in the gradient norm, with L0, L1 "
        "fitted at quantile q on half of the probed steps and checked on the other half",
        symbols="smooth_lip_t ≤ L0 + L1‖g_t‖ (optimizer geometry: smooth_lip_P, ‖g_t‖_{P,*})",
        family="step",
        keys=("step/grad_norm", "step/smooth_lip"),
        kind="fitted",
        finding="smoothness",
        fit=("step/grad_norm", "step/smooth_lip", ("L0", "L1")),
        axes=("geometry", "scheme"),
        per_geometry=("step/grad_norm", "step/smooth_lip"),
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


def finding_evidence(finding: str) -> list[Assumption]:
    """The assumptions that are independent evidence for a study finding (``smoothness``:
    descent_bound, l0l1_smooth; ``convexity``: inst_gap and ref_gap, convexity along the step
    and towards x*), leaving out near-duplicates (inst_gap_old)."""
    return [a for a in _ALL if a.finding == finding and a.duplicates is None]


_VARIANTS = tuple(v for a in _ALL for v in a.variants())


def all_variants() -> Iterator[Variant]:
    """Every variant of every assumption, in reporting order."""
    return iter(_VARIANTS)


def variants_logged_under(prefix: str, kind: str | None = None) -> list[Variant]:
    """The variants whose keys a probe logging under ``prefix`` writes (``step``,
    ``step_fresh``, ``ref``...), optionally of one kind."""
    return [
        v
        for v in all_variants()
        if v.prefix == prefix and (kind is None or v.assumption.kind == kind)
    ]


def verdict_rank(verdict_id: str) -> tuple:
    """Sort key of a verdict id (or a bare assumption id): the registry's order of assumptions,
    then of its variants (a bare id before them); ids of unknown assumptions last, by name."""
    base = str(verdict_id).split(":", 1)[0]
    if base not in ASSUMPTIONS:
        return (len(ASSUMPTIONS), 0, str(verdict_id))
    rank = next((i for i, v in enumerate(_VARIANTS) if v.id == verdict_id), -1)
    return (list(ASSUMPTIONS).index(base), rank, str(verdict_id))


def variant_by_id(verdict_id: str) -> Variant:
    """The variant of a verdict id (``descent_bound:path:same_batch``)."""
    for v in all_variants():
        if v.id == verdict_id:
            return v
    raise KeyError(f"no assumption variant has the id {verdict_id!r}")


def _variant_words(a: Assumption) -> str:
    if not a.axes:
        return "—"
    return " × ".join(f"{axis} ∈ {{{', '.join(AXES[axis])}}}" for axis in a.axes)


def markdown_table() -> str:
    """README's and docs/metrics.md's table of assumptions, generated from the registry."""
    lines = [
        "| id | assumption | held on a probed step when | keys | judged | variants (id order) |",
        "|---|---|---|---|---|---|",
    ]
    for a in _ALL:
        judged = "sign, within `float_tol`" if a.kind == "sign" else "fitted at q, out of sample"
        if a.progress_key:
            judged += f"; scored where `{a.progress_key}` < 0"
        if a.sides:
            judged += "; also summed over the run"
        keys = ", ".join(f"`{k}_<L>`" if k in a.per_choice else f"`{k}`" for k in a.keys)
        if "scheme" in a.axes:
            keys += f" (`{SCHEMES['fresh_batch']}/…` for fresh_batch)"
        if "geometry" in a.axes:
            keys += f"; `…{GEOMETRY_SUFFIX}` in the optimizer's norm"
        lines.append(
            f"| `{a.id}` | {a.label} | {a.symbols}: {a.condition} | {keys} | {judged} "
            f"| {_variant_words(a)} |"
        )
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
