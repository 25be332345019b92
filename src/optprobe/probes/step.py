"""Step probes: what smoothness and convexity analyses predict for one optimizer step, and
what the step actually did (Tran, Zhang & Cutkosky 2024, section 1 of docs/metrics.md).

For the step x_t -> x_{t+1} = x_t + Δ_t on mini-batch loss f_t:

    D_t = f_t(x_{t+1}) - f_t(x_t)                      progress made (nats)
    inst_gap = D_t - <g⁺_t, Δ_t>   (≤ 0 if f_t is convex along the step, seen from x_{t+1})
    inst_gap_old = D_t - <g_t, Δ_t>  (≥ 0 if convex along the step, seen from x_t)
    smooth_eff = 2 (D_t - <g_t, Δ_t>) / ‖Δ_t‖²   (smallest L for the descent lemma here;
                                                  undefined within the losses' rounding)
    descent_bound_past = <g_t, Δ_t> + L_past/2 ‖Δ_t‖²   (L_past: max of smooth_lip over the
                                                  earlier probed steps; holds when ≥ D_t, < 0)

g_t is the raw loss gradient of the training step (before clipping and weight decay), Δ_t the
update the optimizer applied; inner products are accumulated in float64. The formulas are
pure functions in :mod:`optprobe.estimators.identities`. The other two L choices of
docs/metrics.md §1a (``path``, ``local``) need the whole run: the verdicts compute them from
the logged keys.

Two batch schemes, two different quantities, each under its own key prefix (the registry's
``SCHEMES``): ``same_batch`` logs ``step/*`` (D_t and both gradients on the step's batch z_t),
``fresh_batch`` logs ``step_fresh/*`` (the same keys on the next batch z_{t+1}, an unbiased
estimate of the population progress). Both can run in one job (``probes=[standard,
step_fresh]``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from optprobe.assumptions import SCHEMES
from optprobe.estimators.functional import (
    ParamDict,
    flatten,
    functional_loss,
    hvp_double_backward,
    unflatten_like,
)
from optprobe.estimators.geometry import geometry_quantities
from optprobe.estimators.identities import (
    descent_bound,
    float_tolerance,
    simpson_quantities,
    step_quantities,
)
from optprobe.estimators.layer_groups import ParamGroups, group_step_quantities
from optprobe.optim.registry import optimizer_geometry
from optprobe.probes.aggregates import RunningAggregates
from optprobe.probes.base import ProbeCallback
from optprobe.validate import check_bool, check_choice, check_number

SCHEME_CHOICES = ("same_batch", "fresh_batch", "auto", "next_batch")
LEGACY_SCHEMES = {"next_batch": "fresh_batch"}  # the fresh-batch scheme's name before 0.3
LAYER_PREFIXES = {"step": "layer", "step_fresh": "layer_fresh"}  # per_layer keys, by family
EMA_KEYS = ("loss_change", "lin_new", "inst_gap", "inst_gap_old", "smooth_lip")


def resolve_scheme(config_key: str, scheme: str, old_point_keys: bool) -> str:
    """``same_batch`` or ``fresh_batch`` from the setting (``auto``: fresh_batch when
    ``old_point_keys`` is false, else same_batch; ``next_batch`` is fresh_batch's old name)."""
    check_choice(f"{config_key}.scheme", scheme, SCHEME_CHOICES)
    if scheme == "auto":
        return "same_batch" if old_point_keys else "fresh_batch"
    return LEGACY_SCHEMES.get(scheme, scheme)


def _past_bound(
    values: dict[str, float], suffix: str, max_lip: float | None, out: dict[str, float]
) -> float:
    """Adds ``L_past<suffix>`` and ``descent_bound_past<suffix>`` (from the max ``max_lip`` of
    the earlier steps' ``smooth_lip<suffix>``; none on the first) to ``out``; returns the max
    including this step."""
    if max_lip is not None:
        out[f"L_past{suffix}"] = max_lip
        out[f"descent_bound_past{suffix}"] = descent_bound(
            values["lin_old"], values[f"update_norm{suffix}"], max_lip
        )
    return max(max_lip or 0.0, values[f"smooth_lip{suffix}"])


def _write_marks(params: ParamDict) -> tuple:
    """What changes when a parameter is written: its version counters and its end elements."""
    with torch.no_grad():
        ends = flatten(p.detach().reshape(-1)[[0, -1]] for p in params.values() if p.numel())
    return tuple(p._version for p in params.values()), tuple(ends.tolist())


class StepProbe(ProbeCallback):
    """Step probes of docs/metrics.md section 1, logged as ``step/<key>`` (same-batch scheme)
    or ``step_fresh/<key>`` (fresh-batch scheme).

    Per probed step: ``loss_change``, ``lin_old``, ``lin_new``, ``inst_gap``, ``inst_gap_old``,
    ``smooth_lip``, ``smooth_eff`` (not logged where undefined: |D_t − <g_t,Δ_t>| within
    ``float_tol``; ``smooth_eff_undefined`` counts those steps), ``update_cos_old``,
    ``update_cos_new``, ``update_cos_prev``, ``grad_norm``, ``update_norm``, ``curv_dir``
    (optional), ``loss_change_quad`` and ``smooth_eff_quad`` (optional), ``float_tol``,
    ``L_past`` and ``descent_bound_past`` (from the second probed step on: L_past is the max of smooth_lip over the earlier probed steps); in the
    optimizer's own norm, where the registry gives one (module docstring): ``update_norm_P``,
    ``smooth_lip_P``, ``grad_norm_P``, ``L_past_P``, ``descent_bound_past_P``. Aggregates:
    ``<key>_ema<β>`` for loss_change, lin_new, inst_gap, inst_gap_old, smooth_lip;
    ``cum_loss_change``, ``cum_lin_old``, ``cum_lin_new``; ``convexity_ratio`` (cumulative
    Σ<g⁺,Δ>/ΣD) and ``convexity_ratio_window``; the running fractions ``frac_<...>_held`` of
    the registry checks judged online (see ``optprobe.assumptions``); ``skipped``.
    With ``per_layer``: ``layer/<group>/<key>`` (``layer_fresh/`` for the fresh-batch scheme)
    for the parameter groups of :mod:`optprobe.estimators.layer_groups`.

    Args (also the base's cadence arguments: log_spaced, per_decade, start_step):
        scheme: ``same_batch`` evaluates f_t and its gradient at x_{t+1} on the step's batch
            (one extra forward+backward). ``fresh_batch`` takes f_{t+1}(x_{t+1}) and its
            gradient from the next training step for free and evaluates at x_t on z_{t+1}: one
            extra forward for D (+ a backward when ``old_point_keys``). They measure different
            quantities (the step fitting its own batch's noise, or population progress), so
            each logs under its own prefix: ``step/*`` and ``step_fresh/*``. ``auto``:
            ``fresh_batch`` when ``old_point_keys`` is false, else ``same_batch`` — a
            different quantity, not a cheaper way to get the same keys. ``next_batch`` is
            the old name of ``fresh_batch``.
        old_point_keys: also compute the keys needing the gradient at x_t (lin_old,
            inst_gap_old, smooth_*, descent_bound_past, update_cos_old, grad_norm).
        curv_dir: also log Δᵀ H_t Δ / ‖Δ‖² (one forward, one backward with graph, one HVP); the
            ``local`` L of the descent-bound verdicts uses it when logged.
        quadrature: also log D_t and smooth_eff by Simpson's rule from the gradients at x_t,
            x_t + Δ_t/2 and x_{t+1} on the same batch (``simpson_quantities``; one forward +
            backward at the midpoint; needs ``old_point_keys``): ``smooth_eff_quad`` is
            defined where the loss difference is within rounding and ``smooth_eff`` is not.
        per_layer: also log, per parameter group named from the model (embedding, attention,
            mlp, norm, head, conv, ...), ``lin_new``, ``update_norm``, ``update_cos_new`` and,
            with the old-point keys, ``lin_old``, ``grad_norm``, ``update_cos_old``,
            ``smooth_lip``: slices of the vectors the step keys use, no extra pass.
        min_update_norm, min_lr: skip (and count) steps with ‖Δ‖ or lr at or below these.
        window: number of probed steps in ``convexity_ratio_window``.
        ema_betas: EMA factors of the aggregates.

    Under mixed precision f_t(x_t) and g_t are recomputed outside autocast (one more
    forward+backward per probed step), so both points of every difference are evaluated in
    the same precision; in 32-true/64-true the training step's own values are used.
    """

    default_name = "step"
    refuses_dropout = True
    fixed_batch_allowed = False

    def __init__(
        self,
        every_n_steps: int = 1,
        scheme: str = "same_batch",
        old_point_keys: bool = True,
        curv_dir: bool = False,
        quadrature: bool = False,
        per_layer: bool = False,
        min_update_norm: float = 1e-12,
        min_lr: float = 0.0,
        window: int = 100,
        ema_betas: tuple[float, ...] = (0.9, 0.99, 0.999),
        **schedule: Any,
    ) -> None:
        name = schedule.get("name") or self.default_name
        self.old_point_keys = bool(old_point_keys)
        self.scheme = resolve_scheme(f"probes.{name}", scheme, self.old_point_keys)
        # the scheme decides the key prefix: step/* (same batch), step_fresh/* (fresh batch)
        self.family = SCHEMES[self.scheme]
        if name in SCHEMES.values() and name not in (self.default_name, self.family):
            raise ValueError(
                f"probes.{name} logs {name}/*, the keys of the "
                f"{next(s for s, p in SCHEMES.items() if p == name)} scheme, but has "
                f"scheme={self.scheme}: set probes.{name}.scheme accordingly or rename the entry"
            )
        super().__init__(every_n_steps, **schedule)
        key = self.config_key
        for beta in ema_betas:
            check_number(f"{key}.ema_betas", beta, low=0, high=1, low_open=True, high_open=True)
        self.curv_dir = bool(curv_dir)
        self.quadrature = check_bool(f"{key}.quadrature", quadrature)
        if self.quadrature and not self.old_point_keys:
            raise ValueError(
                f"{key}.quadrature needs the gradient at x_t: set {key}.old_point_keys=true "
                f"or {key}.quadrature=false"
            )
        self.per_layer = check_bool(f"{key}.per_layer", per_layer)
        self._groups: ParamGroups | None = None  # built from the network at the first probe
        self.min_update_norm = check_number(f"{key}.min_update_norm", min_update_norm, low=0)
        self.min_lr = check_number(f"{key}.min_lr", min_lr, low=0)
        self.agg = RunningAggregates(tuple(ema_betas), window)
        self.max_lip: float | None = None  # max smooth_lip over the probed steps so far
        self.max_lip_P: float | None = None  # the same of smooth_lip_P (optimizer's norm)
        self.num_eff_undefined = 0
        self.prev_delta: torch.Tensor | None = None
        self._x_old: torch.Tensor | None = None
        # (write marks, flat float64 x) at the last recorded step's end: the next step's x_t
        self._x_cache: tuple[tuple, torch.Tensor] | None = None
        self._pending: dict[str, Any] | None = None  # fresh_batch: the update awaiting z_{t+1}
        self._at_step: dict[str, Any] = {}

    # --------------------------------------------------------------------------- hooks
    def wants_step(self, step: int) -> bool:
        # The step before a probed one records Δ_{t-1} (update_cos_prev); under fresh_batch the
        # step after finishes the pending update with its own loss and gradient.
        return self._records_delta(step) or (
            self.scheme == "fresh_batch" and self.is_probe_step(step - 1)
        )

    def _records_delta(self, step: int) -> bool:
        """Whether Δ_step is needed: the probed update itself, or Δ_{t-1} of the next one."""
        return self.is_probe_step(step) or self.is_probe_step(step + 1)

    def _flat_params(self, params: ParamDict) -> torch.Tensor:
        """x as one flat float64 vector, reusing the copy taken at the previous step's end when
        no parameter was written since: one float64 copy of the parameters per recorded step
        instead of two. Written means a changed version counter (in-place ops on a parameter)
        or a changed first/last element of a parameter (writes through ``.data``, which the
        counter does not see)."""
        if self._x_cache is not None and self._x_cache[0] == _write_marks(params):
            return self._x_cache[1]
        return flatten(p.detach() for p in params.values())

    def before_step(self, trainer, pl_module, optimizer, step: int) -> None:
        params = self.params(pl_module)
        if self._records_delta(step):
            self._x_old = self._flat_params(params)
        self._x_cache = None
        finishing = self.scheme == "fresh_batch" and self._pending is not None
        # The training step's loss and gradient are needed for a probed update (same_batch) or
        # to finish the pending one (fresh_batch: they are f_{t+1}(x_{t+1}) and its gradient);
        # neighbouring steps only record x_t for Δ.
        loss_now = grad_now = None
        if finishing or (self.scheme == "same_batch" and self.is_probe_step(step)):
            loss_now, grad_now = self.training_loss_and_grad(trainer, pl_module, params)
        self._at_step = {"loss": loss_now, "grad": grad_now, "lr": optimizer.param_groups[0]["lr"]}
        if finishing:
            self._finish_fresh_batch(trainer, pl_module, params)

    def after_step(self, trainer, pl_module, step: int) -> None:
        if not self._records_delta(step):
            self.prev_delta = None  # fresh_batch's finishing step: its own Δ is not needed
            return
        params = self.params(pl_module)
        x_new = flatten(p.detach() for p in params.values())
        if self._records_delta(step + 1):  # kept only for the next step's x_t, never longer
            self._x_cache = (_write_marks(params), x_new)
        delta = x_new - self._x_old
        prev, self.prev_delta = self.prev_delta, delta
        if not self.is_probe_step(step):
            return
        info = {**self._at_step, "delta": delta, "delta_prev": prev, "step": step}
        # after the step: the optimizer's state holds the preconditioner this step used
        info["geometry"] = optimizer_geometry(trainer.optimizers[0], params)
        info["x_old"] = self._x_old  # x_t, flat float64 (fresh_batch's pass, curv_dir's HVP)
        if self.scheme == "fresh_batch":
            self._pending = info
            return
        self._probe_same_batch(trainer, pl_module, params, info)

    # --------------------------------------------------------------------------- schemes
    def _probe_same_batch(self, trainer, pl_module, params: ParamDict, info: dict) -> None:
        if self._skip_tiny(trainer, pl_module, info):
            return
        loss_new, grad_new = self.window_loss_and_grad(pl_module, params)
        grad_old = info["grad"] if self.old_point_keys else None
        self._finish(trainer, pl_module, info, info["loss"], loss_new, grad_new, grad_old)

    def _finish_fresh_batch(self, trainer, pl_module, params: ParamDict) -> None:
        """At x_{t+1} on z_{t+1}: complete the pending update t with one pass at x_t."""
        info, self._pending = self._pending, None
        if self._skip_tiny(trainer, pl_module, info):
            return
        old_params = unflatten_like(info["x_old"], params)
        if self.old_point_keys:
            loss_old, grad_old = self.window_loss_and_grad(pl_module, old_params)
        else:
            loss_old, grad_old = self.window_mean_loss(pl_module, old_params), None
        now = self._at_step
        self._finish(trainer, pl_module, info, loss_old, now["loss"], now["grad"], grad_old)

    def _skip_tiny(self, trainer, pl_module, info: dict) -> bool:
        if float(info["delta"].norm()) <= self.min_update_norm or info["lr"] <= self.min_lr:
            self.log_values(trainer, pl_module, self.skip("tiny update or lr"))
            return True
        return False

    # --------------------------------------------------------------------------- bookkeeping
    def _curvature_along_update(self, pl_module, info: dict) -> float:
        x_old = unflatten_like(info["x_old"], self.params(pl_module))  # exact: float64 holds x_t
        matvecs = []
        for batch in self.window:
            fn = functional_loss(self.model.net, batch, self.model.loss)
            matvecs.append(hvp_double_backward(fn, x_old)(info["delta"]))
        hv = self.global_mean(torch.stack(matvecs).mean(0))
        return float(info["delta"] @ hv) / float(info["delta"] @ info["delta"])

    def _simpson(self, pl_module, info: dict, grad_old, grad_new) -> dict[str, float]:
        """``loss_change_quad`` and ``smooth_eff_quad``: the gradient at the midpoint x_t + Δ/2
        (from the float64 x_t, on the batch of the step's other gradients) and Simpson's rule."""
        params = self.params(pl_module)
        x_mid = unflatten_like(info["x_old"] + 0.5 * info["delta"], params)
        _, grad_mid = self.window_loss_and_grad(pl_module, x_mid)
        return simpson_quantities(grad_old, grad_mid, grad_new, info["delta"])

    def _finish(self, trainer, pl_module, info: dict, loss_old, loss_new, grad_new, grad_old):
        """The step's keys from both points' losses and gradients (same batch, same precision),
        the online descent bound and the aggregates; logs them."""
        dtype = next(self.model.net.parameters()).dtype
        tol = float_tolerance(dtype, max(abs(loss_old), abs(loss_new)))
        values = step_quantities(
            loss_old, loss_new, grad_new, info["delta"], grad_old, info["delta_prev"], tol=tol
        )
        values["float_tol"] = tol
        if info.get("geometry") is not None:
            values.update(geometry_quantities(info["geometry"], info["delta"], grad_new, grad_old))
        if self.curv_dir:
            values["curv_dir"] = self._curvature_along_update(pl_module, info)
        if self.quadrature:
            values.update(self._simpson(pl_module, info, grad_old, grad_new))
        may_be_nan = ("update_cos_prev", "smooth_eff")
        if not self.finite_or_skip(trainer, pl_module, values, info["step"], may_be_nan):
            return
        self.num_probed += 1
        out = {k: v for k, v in values.items() if not math.isnan(v)}  # NaN: undefined, unlogged
        if "smooth_lip" in values:
            out.update(self._online_smoothness(values))
            out["cum_lin_old"] = self.agg.add("lin_old", values["lin_old"])
        for key in EMA_KEYS:
            if key in values:
                out.update(self.agg.update_ema(key, values[key]))
        out.update(self._cumulative(values))
        out["skipped"] = float(self.num_skipped)
        logged = {f"{self.family}/{k}": v for k, v in out.items()}
        logged.update(self.agg.record_variants(self.family, logged))
        if self.per_layer:
            logged.update(self._layer_keys(pl_module, info["delta"], grad_new, grad_old))
        self.log_values(trainer, pl_module, logged)

    def _layer_keys(self, pl_module, delta, grad_new, grad_old) -> dict[str, float]:
        """``layer/<group>/<key>`` (``layer_fresh/...`` for the fresh-batch scheme): the step's
        quantities per parameter group, sliced from the step's vectors (NaN ones unlogged)."""
        if self._groups is None:
            self._groups = ParamGroups.of(self.model.net, self.params(pl_module))
        prefix = LAYER_PREFIXES[self.family]
        per_group = group_step_quantities(self._groups, delta, grad_new, grad_old)
        return {
            f"{prefix}/{group}/{key}": value
            for group, values in per_group.items()
            for key, value in values.items()
            if not math.isnan(value)
        }

    def _online_smoothness(self, values: dict[str, float]) -> dict[str, float]:
        """``L_past`` (max smooth_lip of the *earlier* probed steps, read before this step
        updates it) and its descent bound, the same in the optimizer's norm (``_P``) where
        measured; the count of steps with smooth_eff undefined."""
        if math.isnan(values["smooth_eff"]):
            self.num_eff_undefined += 1
        out = {"smooth_eff_undefined": float(self.num_eff_undefined)}
        self.max_lip = _past_bound(values, "", self.max_lip, out)
        if "smooth_lip_P" in values:
            self.max_lip_P = _past_bound(values, "_P", self.max_lip_P, out)
        return out

    def _cumulative(self, values: dict[str, float]) -> dict[str, float]:
        """Cumulative sums of D and <g⁺, Δ> and the convexity ratios (cumulative, window)."""
        agg = self.agg
        cum_d = agg.add("loss_change", values["loss_change"])
        cum_lin = agg.add("lin_new", values["lin_new"])
        win_d = agg.window_sum("loss_change")
        return {
            "cum_loss_change": cum_d,
            "cum_lin_new": cum_lin,
            "convexity_ratio": cum_lin / cum_d if cum_d != 0 else math.nan,
            "convexity_ratio_window": agg.window_sum("lin_new") / win_d if win_d else math.nan,
        }

    def resolved_settings(self) -> dict[str, Any]:
        return {"scheme": self.scheme}

    def final_summary(self) -> dict[str, Any]:
        """Fractions held per online verdict id, the scheme, skips, the largest smooth_lip and
        the steps with smooth_eff undefined (for summary.json)."""
        return {
            **super().final_summary(),
            "scheme": self.scheme,
            "held": self.agg.fractions(),
            "max_smooth_lip": self.max_lip,
            "max_smooth_lip_P": self.max_lip_P,
            "smooth_eff_undefined": self.num_eff_undefined,
        }

    # --------------------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        return {
            "agg": self.agg.state_dict(),
            "max_lip": self.max_lip,
            "max_lip_P": self.max_lip_P,
            "num_eff_undefined": self.num_eff_undefined,
            "prev_delta": self.prev_delta,
            "pending": self._pending,
            "scheme": self.scheme,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.agg.load_state_dict(state["agg"])
        self.max_lip = state["max_lip"]
        self.max_lip_P = state.get("max_lip_P")
        self.num_eff_undefined = state.get("num_eff_undefined", 0)
        self.prev_delta = state["prev_delta"]
        self._pending = state["pending"]
