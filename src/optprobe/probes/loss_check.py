"""The first probed step's check that the probes measure the function being trained.

Probes evaluate ``loss(net, batch)`` (:mod:`optprobe.probes.target`) at other parameters. If
that loss is not the one the training step backpropagates (a penalty, label smoothing or an
auxiliary loss added in ``training_step``, another reduction, a loss scale), every verdict is
about another function while looking right. So the first probe of a trainer recomputes the
loss at x_t on the step's batch once and compares it with the loss the step backpropagated.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from optprobe.dist import rank_mean
from optprobe.estimators.functional import functional_loss
from optprobe.isolation import has_active_dropout

REL_TOL = {"full": 1e-4, "reduced": 1e-2}
"""Relative tolerance of the comparison: parameters and passes in float32/64 (``full``), or in
16-bit / under autocast (``reduced``, where the step's own kernels may round differently)."""
ABS_TOL = 1e-6
"""Absolute tolerance (nats) for losses near zero."""


class TrainingLossMismatch(ValueError):
    """The probes' loss is not the training step's loss on the same batch at the same point."""


def _autocast_dtype(trainer: Any) -> torch.dtype | None:
    precision = str(getattr(trainer, "precision", "32-true"))
    if not precision.endswith("-mixed"):
        return None
    return torch.bfloat16 if precision.startswith("bf16") else torch.float16


def check_training_loss(probe: Any, trainer: Any, pl_module: Any) -> dict[str, Any] | None:
    """Compare ``probe``'s loss at the live parameters on the step's micro-batches with the
    loss the step backpropagated (both the mean over micro-batches and DDP ranks, nats).

    Returns the record kept in the probe's summary (``loss_check``), or None when the step's
    training loss is not finite (the next step is checked instead); raises
    :class:`TrainingLossMismatch` naming both values when they differ by more than the
    tolerance. Skipped (and recorded as such) when the network has active dropout: the
    training step drew a mask that no probe pass can redraw.
    """
    net = probe.model.net
    step = int(trainer.global_step)
    if has_active_dropout(net):
        return {"step": step, "status": "skipped: active dropout (another mask per pass)"}
    trained = probe.window_loss()
    if not math.isfinite(trained):
        return None  # a non-finite step is the non-finite guard's; the next step is checked
    dtype = _autocast_dtype(trainer)
    device = next(net.parameters()).device.type
    with probe.timed(net):  # the step's autocast, when it had one; buffers cloned
        params = probe.params(pl_module)
        autocast = torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None)
        with torch.no_grad(), autocast:
            losses = [functional_loss(net, b, probe.model.loss)(params) for b in probe.window]
            local = torch.stack([loss.double().reshape(()) for loss in losses]).mean()
    measured = float(rank_mean(local))
    reduced = dtype is not None or next(net.parameters()).dtype in (torch.float16, torch.bfloat16)
    rel_tol = REL_TOL["reduced" if reduced else "full"]
    diff = measured - trained
    record = {
        "step": step,
        "training_loss": trained,
        "probe_loss": measured,
        "difference": diff,
        "rel_tol": rel_tol,
    }
    if abs(diff) <= ABS_TOL + rel_tol * abs(trained):
        return {**record, "status": "equal"}
    raise TrainingLossMismatch(
        f"{probe.config_key}: on step {step}'s batch the probes' loss is {measured:.6g} but the "
        f"training step backpropagated {trained:.6g} (difference {diff:+.3g}, "
        f"{_percent(diff, trained)}; tolerance {rel_tol:g} relative). The probes would measure "
        "another function than the one being trained. Make the probes' `loss(net, batch)` "
        "return exactly what training_step backpropagates: penalties (weight norms, auxiliary "
        "losses), label smoothing, the reduction (mean, not sum) and any loss scaling must be "
        "in both."
    )


def _percent(diff: float, reference: float) -> str:
    if reference == 0 or not math.isfinite(reference):
        return "relative difference undefined"
    return f"{100 * abs(diff) / abs(reference):.3g}% of the training loss"
