"""Step probes: what smoothness and convexity analyses predict for one optimizer step, and
what the step actually did (Tran, Zhang & Cutkosky 2024, section 1 of docs/metrics.md).

For the step x_t -> x_{t+1} = x_t + Δ_t on mini-batch loss f_t:

    D_t = f_t(x_{t+1}) - f_t(x_t)                      progress made (nats)
    inst_gap = D_t - <g⁺_t, Δ_t>   (≤ 0 if f_t is convex along the step, seen from x_{t+1})
    inst_gap_old = D_t - <g_t, Δ_t>  (≥ 0 if convex along the step, seen from x_t)
    smooth_eff = 2 (D_t - <g_t, Δ_t>) / ‖Δ_t‖²   (smallest L for the descent lemma here)
    descent_bound = <g_t, Δ_t> + L/2 ‖Δ_t‖²       (holds when ≥ D_t and < 0)

g_t is the raw loss gradient of the training step (before clipping and weight decay), Δ_t the
update the optimizer applied; inner products are accumulated in float64. The formulas are
pure functions in :mod:`optprobe.estimators.identities`.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from optprobe.assumptions import of_family
from optprobe.estimators.functional import (
    ParamDict,
    flatten,
    functional_loss,
    hvp_double_backward,
    loss_and_grad,
    unflatten_like,
)
from optprobe.estimators.identities import descent_bound, float_tolerance, step_quantities
from optprobe.probes.aggregates import RunningAggregates
from optprobe.probes.base import ProbeCallback
from optprobe.validate import check_choice, check_number

SCHEMES = ("auto", "same_batch", "next_batch")
L_SOURCES = ("running_max_lip", "lambda_max")
EMA_KEYS = ("loss_change", "lin_new", "inst_gap", "inst_gap_old", "smooth_lip")


class StepProbe(ProbeCallback):
    """Step probes of docs/metrics.md section 1, logged as ``step/<key>``.

    Per probed step: ``loss_change``, ``lin_old``, ``lin_new``, ``inst_gap``, ``inst_gap_old``,
    ``smooth_lip``, ``smooth_eff``, ``descent_bound``, ``update_cos_old``, ``update_cos_new``,
    ``update_cos_prev``, ``grad_norm``, ``update_norm``, ``curv_dir`` (optional), ``L``
    (the global smoothness estimate used by ``descent_bound``). Aggregates: ``<key>_ema<β>``
    for loss_change, lin_new, inst_gap, inst_gap_old, smooth_lip; ``cum_loss_change``,
    ``cum_lin_old``, ``cum_lin_new``; ``convexity_ratio`` (cumulative Σ<g⁺,Δ>/ΣD) and
    ``convexity_ratio_window``; ``frac_inst_gap_held``, ``frac_inst_gap_old_held``,
    ``frac_descent_bound_held`` (fraction of probed steps on which each held); ``skipped``.

    Args (also the base's cadence arguments: log_spaced, per_decade, start_step):
        scheme: ``same_batch`` evaluates f_t and its gradient at x_{t+1} on the step's batch
            (one extra forward+backward). ``next_batch`` takes f_{t+1}(x_{t+1}) and its gradient
            from the next training step for free and evaluates at x_t on z_{t+1}: one extra
            forward (+ a backward when ``old_point_keys``). ``auto``: ``next_batch`` when
            ``old_point_keys`` is false (same keys, cheaper), else ``same_batch``.
        old_point_keys: also compute the keys needing the gradient at x_t (lin_old,
            inst_gap_old, smooth_*, descent_bound, update_cos_old, grad_norm).
        smoothness_source: L for ``descent_bound``: ``running_max_lip`` (running max of
            smooth_lip) or ``lambda_max`` (latest ``curv/lambda_max`` of a curvature probe,
            running max of smooth_lip until there is one).
        curv_dir: also log Δᵀ H_t Δ / ‖Δ‖² (one forward, one backward with graph, one HVP).
        min_update_norm, min_lr: skip (and count) steps with ‖Δ‖ or lr at or below these.
        window: number of probed steps in ``convexity_ratio_window``.
        ema_betas: EMA factors of the aggregates.
    """

    family = "step"
    default_name = "step"
    refuses_dropout = True
    fixed_batch_allowed = False

    def __init__(
        self,
        every_n_steps: int = 1,
        scheme: str = "auto",
        old_point_keys: bool = True,
        smoothness_source: str = "running_max_lip",
        curv_dir: bool = False,
        min_update_norm: float = 1e-12,
        min_lr: float = 0.0,
        window: int = 100,
        ema_betas: tuple[float, ...] = (0.9, 0.99, 0.999),
        **schedule: Any,
    ) -> None:
        super().__init__(every_n_steps, **schedule)
        key = self.config_key
        check_choice(f"{key}.scheme", scheme, SCHEMES)
        check_choice(f"{key}.smoothness_source", smoothness_source, L_SOURCES)
        for beta in ema_betas:
            check_number(f"{key}.ema_betas", beta, low=0, high=1, low_open=True, high_open=True)
        self.old_point_keys = bool(old_point_keys)
        if scheme == "auto":
            scheme = "same_batch" if self.old_point_keys else "next_batch"
        self.scheme = scheme
        self.smoothness_source = smoothness_source
        self.curv_dir = bool(curv_dir)
        self.min_update_norm = check_number(f"{key}.min_update_norm", min_update_norm, low=0)
        self.min_lr = check_number(f"{key}.min_lr", min_lr, low=0)
        self.agg = RunningAggregates(tuple(ema_betas), window)
        self.max_lip = 0.0
        self.prev_delta: Tensor | None = None
        self._x_old: Tensor | None = None
        self._pending: dict[str, Any] | None = None  # next_batch: the update awaiting z_{t+1}
        self._at_step: dict[str, Any] = {}

    # --------------------------------------------------------------------------- hooks
    def wants_step(self, step: int) -> bool:
        # Neighbouring steps record x_t and Δ_t too (update_cos_prev, next_batch scheme).
        return any(self.is_probe_step(step + k) for k in (-1, 0, 1))

    def before_step(self, trainer, pl_module, optimizer, step: int) -> None:
        params = self.params(pl_module)
        self._x_old = flatten(p.detach() for p in params.values())
        finishing = self.scheme == "next_batch" and self._pending is not None
        # g_t is needed for a probed update (same_batch) or to finish the pending one
        # (next_batch); neighbouring steps only record x_t for Δ.
        loss_now = grad_now = None
        if self.is_probe_step(step) or finishing:
            loss_now = self.window_loss()
            grad_now = flatten(
                torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params.values()
            )
        self._at_step = {"loss": loss_now, "grad": grad_now, "lr": optimizer.param_groups[0]["lr"]}
        if finishing:
            self._finish_next_batch(trainer, pl_module, params)
        if self.curv_dir and self.is_probe_step(step):
            self._at_step["x_old_params"] = {k: p.detach().clone() for k, p in params.items()}

    def after_step(self, trainer, pl_module, step: int) -> None:
        params = self.params(pl_module)
        delta = flatten(p.detach() for p in params.values()) - self._x_old
        prev, self.prev_delta = self.prev_delta, delta
        if not self.is_probe_step(step):
            return
        info = {**self._at_step, "delta": delta, "delta_prev": prev, "step": step}
        if self.scheme == "next_batch":
            info["x_old"] = self._x_old
            self._pending = info
            return
        self._probe_same_batch(trainer, pl_module, params, info)

    # --------------------------------------------------------------------------- schemes
    def _mean_loss_and_grad(self, pl_module, params: ParamDict) -> tuple[float, Tensor]:
        """Mean loss and gradient over the step's micro-batches (and DDP ranks) at ``params``."""
        losses, grads = [], []
        for inputs, targets in self.window:
            fn = functional_loss(pl_module.net, inputs, targets, pl_module.loss_fn)
            loss, grad = loss_and_grad(fn, params)
            losses.append(loss.reshape(1))
            grads.append(grad)
        local = torch.cat([torch.stack(grads).mean(0), torch.cat(losses).mean().reshape(1)])
        packed = self.global_mean(local)  # one all-reduce for both
        return float(packed[-1]), packed[:-1]

    def _probe_same_batch(self, trainer, pl_module, params: ParamDict, info: dict) -> None:
        if self._skip_tiny(trainer, pl_module, info):
            return
        loss_new, grad_new = self._mean_loss_and_grad(pl_module, params)
        grad_old = info["grad"] if self.old_point_keys else None
        values = step_quantities(
            info["loss"], loss_new, grad_new, info["delta"], grad_old, info["delta_prev"]
        )
        info["loss_abs"] = max(abs(info["loss"]), abs(loss_new))
        self._finish(trainer, pl_module, values, info)

    def _finish_next_batch(self, trainer, pl_module, params: ParamDict) -> None:
        """At x_{t+1} on z_{t+1}: complete the pending update t with one pass at x_t."""
        info, self._pending = self._pending, None
        if self._skip_tiny(trainer, pl_module, info):
            return
        old_params = unflatten_like(info["x_old"], params)
        if self.old_point_keys:
            loss_old, grad_old = self._mean_loss_and_grad(pl_module, old_params)
        else:
            loss_old, grad_old = self.window_mean_loss(pl_module, old_params), None
        now = self._at_step
        values = step_quantities(
            loss_old, now["loss"], now["grad"], info["delta"], grad_old, info["delta_prev"]
        )
        info["loss_abs"] = max(abs(loss_old), abs(now["loss"]))
        self._finish(trainer, pl_module, values, info)

    def _skip_tiny(self, trainer, pl_module, info: dict) -> bool:
        if float(info["delta"].norm()) <= self.min_update_norm or info["lr"] <= self.min_lr:
            self.log_values(trainer, pl_module, self.skip("tiny update or lr"))
            return True
        return False

    # --------------------------------------------------------------------------- bookkeeping
    def smoothness_estimate(self, trainer: pl.Trainer) -> float:
        """The global L used by ``descent_bound`` (1/nats-per-unit² of parameter space)."""
        if self.smoothness_source == "lambda_max":
            for cb in trainer.callbacks:
                lam = getattr(cb, "last_lambda_max", None)
                if lam is not None and math.isfinite(lam):
                    return float(lam)
        return self.max_lip

    def _curvature_along_update(self, pl_module, info: dict) -> float:
        x_old = info["x_old_params"]
        matvecs = []
        for inputs, targets in self.window:
            fn = functional_loss(pl_module.net, inputs, targets, pl_module.loss_fn)
            matvecs.append(hvp_double_backward(fn, x_old)(info["delta"]))
        hv = self.global_mean(torch.stack(matvecs).mean(0))
        return float(info["delta"] @ hv) / float(info["delta"] @ info["delta"])

    def _finish(self, trainer, pl_module, values: dict[str, float], info: dict) -> None:
        dtype = next(pl_module.net.parameters()).dtype
        values["float_tol"] = float_tolerance(dtype, info["loss_abs"])
        if self.curv_dir and "x_old_params" in info:
            values["curv_dir"] = self._curvature_along_update(pl_module, info)
        if not self.finite_or_skip(
            trainer, pl_module, values, info["step"], may_be_nan=("update_cos_prev",)
        ):
            return
        self.num_probed += 1
        out = dict(values)
        if "smooth_lip" in values:
            self.max_lip = max(self.max_lip, values["smooth_lip"])
            out["L"] = self.smoothness_estimate(trainer)
            out["descent_bound"] = descent_bound(values["lin_old"], values["update_norm"], out["L"])
            out["cum_lin_old"] = self.agg.add("lin_old", values["lin_old"])
        out.update(self._held_fractions(out))
        for key in EMA_KEYS:
            if key in values:
                out.update(self.agg.update_ema(key, values[key]))
        out.update(self._cumulative(values))
        out["skipped"] = float(self.num_skipped)
        self.log_values(trainer, pl_module, {f"step/{k}": v for k, v in out.items()})

    def _held_fractions(self, out: dict[str, float]) -> dict[str, float]:
        """Count each registry sign check of this family whose keys this step has; returns the
        running fractions (``frac_<id>_held``)."""
        values = {f"step/{k}": v for k, v in out.items()}
        fractions = {}
        for assumption in of_family("step", kind="sign"):
            if all(k in values for k in assumption.keys):
                held = bool(assumption.held(values))
                key = assumption.running_key.removeprefix("step/")
                fractions[key] = self.agg.record_held(assumption.id, held)
        return fractions

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
        """Fractions held per assumption, the scheme, skips and the fitted L (for summary.json)."""
        return {
            **super().final_summary(),
            "scheme": self.scheme,
            "held": self.agg.fractions(),
            "max_smooth_lip": self.max_lip,
        }

    # --------------------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        return {
            "agg": self.agg.state_dict(),
            "max_lip": self.max_lip,
            "prev_delta": self.prev_delta,
            "pending": self._pending,
            "scheme": self.scheme,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.agg.load_state_dict(state["agg"])
        self.max_lip = state["max_lip"]
        self.prev_delta = state["prev_delta"]
        self._pending = state["pending"]
