"""Which coordinates set L_P: Adam's P = √v̂ + ε is ε where a coordinate has had no gradient
yet (a ReLU unit that has not fired), so a gradient appearing there after the step makes the
dual-norm ratio smooth_lip_P huge. The step keys say how much of it such coordinates carry,
and the verdict note of L_P says so at the step that set it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optprobe.analysis.verdicts import verdict_from_metrics
from optprobe.estimators.geometry import Geometry, geometry_quantities
from optprobe.integration.plain_loop import LoopProbes


def test_floor_share_closed_form():
    precond = torch.tensor([1.0, 1e-8, 2.0], dtype=torch.float64)
    floor = torch.full((3,), 1e-8, dtype=torch.float64)
    geometry = Geometry("diagonal", precond=precond, floor=floor)
    delta = torch.tensor([0.1, 0.0, 0.1], dtype=torch.float64)
    g_old = torch.zeros(3, dtype=torch.float64)
    g_new = torch.tensor([1.0, 1e-3, 1.0], dtype=torch.float64)
    out = geometry_quantities(geometry, delta, g_new, g_old)
    weighted = g_new**2 / precond
    assert out["precond_floor_coords"] == 1.0
    assert out["smooth_lip_P_floor_share"] == pytest.approx(float(weighted[1] / weighted.sum()))
    assert out["smooth_lip_P_floor_share"] > 0.98
    # without a floor (a preconditioner of another form) the keys are not logged
    assert "smooth_lip_P_floor_share" not in geometry_quantities(
        Geometry("diagonal", precond=precond), delta, g_new, g_old
    )


class SwitchOn(nn.Module):
    """f(w) = −w₀ + 10 relu(w₀ − 1) w₁: w₁ has no gradient until w₀ passes 1."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.995, 0.5], dtype=torch.float64))

    def forward(self, _):
        return -self.w[0] + 10.0 * torch.relu(self.w[0] - 1.0) * self.w[1]


def test_the_l_p_note_names_the_coordinates_at_the_floor(tmp_path):
    net = SwitchOn()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    batch = torch.zeros(2, 1, dtype=torch.float64)
    with LoopProbes(net, lambda n, b: n(b), probes=["step"], folder=tmp_path / "r") as probes:
        for _ in range(4):
            loss = probes.loss(batch)
            loss.backward()
            with probes.step(batch, loss, optimizer):
                optimizer.step()
            optimizer.zero_grad()
    rows = probes.history.frame().set_index("step")
    # step 0 crosses w0 = 1: w1's gradient appears where its P is still ε
    assert rows.loc[0, "step/precond_floor_coords"] == 1.0
    assert rows.loc[0, "step/smooth_lip_P_floor_share"] > 0.99
    verdict = verdict_from_metrics(probes.history.frame())
    note = verdict.get("descent_bound:path:optimizer:same_batch").note
    assert "set at step 0 by step/smooth_lip_P" in note
    assert "100% of its ‖g⁺ − g‖² in the dual norm from 1 coordinates with P at its floor" in note
