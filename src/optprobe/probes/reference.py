"""Reference-point probes: compare every iterate with x*, the end of a completed run
(docs/metrics.md section 2). Convex analyses bound f(x_t) - f(x*) through <g_t, x_t - x*>:

    ref/gap      = f_t(x_t) - f_t(x*) - <g_t, x_t - x*>   (≤ 0 when convex w.r.t. x*; nats)
    ref/ratio    = Σ<g_t, x_t - x*> / Σ(f_t(x_t) - f_t(x*))  (cumulative; the verdicts' γ is a
                   low quantile of the per-step ratio ref/lin / ref/excess)
    ref/pl       = ‖g_t‖² / (2 (f_t(x_t) - f_t(x*)))      (PL, raw minibatch ‖g_t‖²; the
                   verdicts' ``pl`` subtracts tr Σ/B where the noise probe ran)
    ref/weak_cvx = gap / (½‖x_t - x*‖²) when gap > float_tol, else 0   (weak convexity ρ)
    ref/dist     = ‖x_t - x*‖

Cost per probed step: one forward at x* on the step's batch (plus, under mixed precision, a
forward+backward at x_t outside autocast, so f_t(x_t), g_t and f_t(x*) share one precision).
x* comes from
``probes.reference.ckpt``; ``optprobe.train`` fills it in by running (or reusing) the same
config without probes, so the probed run replays the reference trajectory. At the end the
probe checks that the replay ended at x* and says so in the job summary when it did not.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override

from optprobe.estimators.functional import ParamDict, flatten
from optprobe.estimators.identities import float_tolerance, reference_quantities
from optprobe.log import warn
from optprobe.probes.aggregates import RunningAggregates
from optprobe.probes.base import ProbeCallback


def load_reference_params(ckpt: str | Path, like: ParamDict) -> ParamDict:
    """The network parameters stored in a Lightning checkpoint, checked against ``like``."""
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(
            f"probes.reference.ckpt={str(ckpt)!r} does not exist; point it at a checkpoint of "
            "a completed run of this config (e.g. <job>/checkpoints/last.ckpt), or set it to "
            "null to let optprobe run the reference itself"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    params = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    missing = [k for k in like if k not in params]
    wrong = [k for k in like if k in params and params[k].shape != like[k].shape]
    if missing or wrong:
        detail = ", ".join(
            [f"{k}: missing" for k in missing[:3]]
            + [f"{k}: {tuple(params[k].shape)} vs model {tuple(like[k].shape)}" for k in wrong[:3]]
        )
        raise ValueError(
            f"probes.reference.ckpt={str(ckpt)!r} does not fit the model ({detail}); use a "
            "checkpoint of a run with the same model config"
        )
    return {k: params[k].to(like[k].dtype) for k in like}


def x_star_digest(params: ParamDict) -> str:
    """A short content hash of x* (names, dtypes, shapes and values, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(params):
        tensor = params[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def x_star_changed(source: str, recorded: dict[str, Any], now: dict[str, Any]) -> str:
    """The message refusing a resume from ``source`` (the checkpoint) whose x* (``now``: its
    ckpt and fingerprint) differs from the one the checkpoint measured ``ref/*`` against
    (``recorded``, from the probe state)."""

    def describe(x_star: dict[str, Any]) -> str:
        fingerprint = x_star.get("fingerprint")
        return f"{x_star['ckpt']} (reference run {fingerprint})" if fingerprint else x_star["ckpt"]

    return (
        f"{source} measured ref/* against x* = {describe(recorded)}, but this run "
        f"would use x* = {describe(now)}, so the steps before and after the resume would be "
        "compared with different points. The reference run is keyed by the settings of the "
        "trajectory (data, model, optimizer, scheduler, seed and trainer.max_steps, max_epochs, "
        "...), so changing one of them on resume changes x* (so does a reference run that was "
        "run again and ended elsewhere). Resume with the first run's "
        f"settings, or keep its x* with probes.reference.ckpt={recorded['ckpt']} (the replay "
        "check at the end then says whether the run still ends there), or resume without this "
        "probe (probes.reference=null), or start a new run"
    )


class ReferenceProbe(ProbeCallback):
    """Reference-point probes, logged as ``ref/<key>``.

    Per probed step: ``gap``, ``excess`` (f_t(x_t) - f_t(x*)), ``lin`` (<g_t, x_t - x*>),
    ``pl``, ``weak_cvx``, ``dist``, ``float_tol``; aggregates ``ratio`` (cumulative
    Σlin/Σexcess), ``frac_ref_gap_held`` (fraction of probed steps with gap ≤ float_tol),
    ``skipped``.

    Args (also the base's cadence arguments: log_spaced, per_decade, start_step):
        ckpt: Lightning checkpoint holding x* (``optprobe.train`` sets it when null).
        replay_rtol: the replay "follows the reference" when ‖x_T - x*‖ ≤ replay_rtol·‖x*‖.
        fingerprint: the trajectory fingerprint of the reference run that wrote ``ckpt``
            (set by ``optprobe.train`` with ``ckpt``; null for a checkpoint given by hand).

    The probe state records x* (``ckpt``, ``fingerprint`` and a digest of its values); a run
    resumed from it with another x* is refused before training (``x_star_changed``).
    """

    family = "ref"
    default_name = "reference"
    refuses_dropout = True
    fixed_batch_allowed = False

    def __init__(
        self,
        every_n_steps: int = 1,
        ckpt: str | None = None,
        replay_rtol: float = 1e-6,
        fingerprint: str | None = None,
        **schedule: Any,
    ) -> None:
        super().__init__(every_n_steps, **schedule)
        self.ckpt = ckpt
        self.fingerprint = fingerprint
        self.x_star: dict[str, Any] = {}
        self.replay_rtol = float(replay_rtol)
        self.agg = RunningAggregates(window=1)
        self.x_ref: torch.Tensor | None = None
        self.ref_params: ParamDict | None = None
        self.replay: dict[str, Any] = {}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.ckpt is None:
            raise ValueError(
                "probes.reference.ckpt is null: run through `python train.py` (which runs or "
                "reuses the reference run) or pass probes.reference.ckpt=<checkpoint>"
            )
        # checked here, before training; device and dtype are matched in on_train_start
        self.ref_params = load_reference_params(self.ckpt, self.params(pl_module))
        self.x_star = {
            "ckpt": str(Path(self.ckpt).resolve()),
            "fingerprint": self.fingerprint,
            "digest": x_star_digest(self.ref_params),
        }

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # after Lightning moved the network and set its precision (e.g. 64-true)
        live = self.params(pl_module)
        self.ref_params = {k: v.to(live[k]) for k, v in self.ref_params.items()}
        self.x_ref = flatten(self.ref_params.values())

    def before_step(self, trainer, pl_module, optimizer, step: int) -> None:
        params = self.params(pl_module)
        loss_ref = self.window_mean_loss(pl_module, self.ref_params)
        loss_x, grad = self.training_loss_and_grad(trainer, pl_module, params)
        x = flatten(p.detach() for p in params.values())
        dtype = next(self.model.net.parameters()).dtype
        tol = float_tolerance(dtype, max(abs(loss_x), abs(loss_ref)))
        values = reference_quantities(loss_x, loss_ref, grad, x, self.x_ref, tol=tol)
        if not self.finite_or_skip(trainer, pl_module, values, step, ("pl", "weak_cvx")):
            return
        self.num_probed += 1
        out = dict(values)
        cum_lin = self.agg.add("lin", values["lin"])
        cum_excess = self.agg.add("excess", values["excess"])
        out["ratio"] = cum_lin / cum_excess if cum_excess != 0 else math.nan
        out["float_tol"] = tol
        out["skipped"] = float(self.num_skipped)
        logged = {f"{self.family}/{k}": v for k, v in out.items()}
        logged.update(self.agg.record_variants(self.family, logged))
        self.log_values(trainer, pl_module, logged)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        x_final = flatten(p.detach() for p in self.params(pl_module).values())
        rel = float((x_final - self.x_ref).norm() / self.x_ref.norm().clamp_min(1e-30))
        self.replay = {"final_rel_dist": rel, "matches": rel <= self.replay_rtol}
        if not self.replay["matches"]:
            warn(
                f"reference probe: the run ended {rel:.3g} (relative) away from x* in "
                f"{self.ckpt}; it did not replay the reference trajectory (different config, "
                "seed, data order or non-deterministic kernels), so ref/* compare against a "
                "point of another trajectory"
            )

    def final_summary(self) -> dict[str, Any]:
        return {
            **super().final_summary(),
            "ckpt": str(self.ckpt),
            "held": self.agg.fractions(),
            "replay": self.replay,
        }

    def extra_state(self) -> dict[str, Any]:
        return {"agg": self.agg.state_dict(), "x_star": self.x_star}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        recorded = state.get("x_star")  # absent in checkpoints before optprobe 0.3
        if recorded and recorded["digest"] != self.x_star["digest"]:
            raise ValueError(x_star_changed("the resumed checkpoint", recorded, self.x_star))
        self.agg.load_state_dict(state["agg"])
