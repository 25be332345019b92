"""Mixed precision: every loss in a difference is evaluated in one precision at both points.

Under ``bf16-mixed`` the training step's loss and gradient come from autocast while the probes'
passes at x_{t+1} and x* run in fp32; the probes recompute f_t(x_t) and g_t in fp32 on probed
steps, so D, inst_gap, smooth_lip and ref/gap equal the fp32 evaluation at the same
(x_t, x_{t+1}). In 32-true the training step's own values are reused (no extra pass).
"""

from __future__ import annotations

import copy

import pytest
import torch
from harness import fit
from test_reference_probe import reference_ckpt
from test_step_probe import batch_loss_grad, data, expected_step_keys, flat

from optprobe.models.simple import MLP
from optprobe.probes.base import ProbeCallback
from optprobe.probes.reference import ReferenceProbe
from optprobe.probes.step import StepProbe

OPT = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
STEPS = 4


def fp32_expected(net, rec, t, batches, x_star):
    """D, inst_gap, smooth_lip and ref/gap of update t, all evaluated in fp32 (no autocast)."""
    keys, g_old = expected_step_keys(net, rec, t, batches, None)
    out = {k: keys[k] for k in ("loss_change", "inst_gap", "smooth_lip")}
    if x_star is not None:
        s = rec.steps[t]
        f_old, _ = batch_loss_grad(net, s.params, batches)
        f_star, _ = batch_loss_grad(net, x_star, batches)
        out["gap"] = f_old - f_star - (g_old @ (flat(s.params) - flat(x_star))).item()
    return out


def test_bf16_mixed_keys_equal_the_fp32_evaluation(tmp_path):
    torch.manual_seed(0)
    x, y = data(dtype=torch.float32)
    net = MLP((1, 4, 4), 3, hidden=(16,), activation="tanh")
    kw = {"optimizer": OPT, "precision": "bf16-mixed"}
    ckpt, x_star = reference_ckpt(tmp_path, net, x, y, steps=STEPS, **kw)
    same, fresh = StepProbe(), StepProbe(scheme="fresh_batch", name="step_fresh")
    ref = ReferenceProbe(ckpt=str(ckpt))
    _, _, rec, sink = fit(copy.deepcopy(net), x, y, [same, fresh, ref], steps=STEPS, **kw)
    tol = max(sink.series("step/float_tol").values())
    assert 0 < tol < 1e-5  # fp32 rounding of the losses
    logged_at = {p: sorted(sink.series(f"{p}/loss_change")) for p in ("step", "step_fresh")}
    assert len(logged_at["step"]) == STEPS and len(logged_at["step_fresh"]) == STEPS - 1
    for t in range(STEPS):
        cases = [("step", rec.steps[t].batches, x_star)]
        if t + 1 < STEPS:  # fresh batch: update t evaluated on z_{t+1}
            cases.append(("step_fresh", rec.steps[t + 1].batches, None))
        for prefix, batches, star in cases:
            expected = fp32_expected(net, rec, t, batches, star)
            for key, value in expected.items():
                logged_key = f"ref/{key}" if key == "gap" else f"{prefix}/{key}"
                step = t if key == "gap" else logged_at[prefix][t]
                got = sink.series(logged_key)[step]
                slack = 1e-3 * abs(value) if key == "smooth_lip" else 10 * tol
                assert got == pytest.approx(value, abs=slack), (logged_key, t)


@pytest.mark.parametrize("precision,extra_passes", [("32-true", 0), ("bf16-mixed", 1)])
def test_mixed_precision_costs_one_pass_and_full_precision_none(
    monkeypatch, precision, extra_passes
):
    calls = []
    original = ProbeCallback.window_loss_and_grad

    def counted(self, pl_module, params):
        calls.append(type(self).__name__)
        return original(self, pl_module, params)

    monkeypatch.setattr(ProbeCallback, "window_loss_and_grad", counted)
    x, y = data(dtype=torch.float32)
    fit(MLP((1, 4, 4), 3, hidden=(8,)), x, y, [StepProbe()], steps=3, precision=precision)
    assert len(calls) == 3 * (1 + extra_passes)  # the pass at x_{t+1}, plus x_t under autocast
