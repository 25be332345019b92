"""Positive and negative controls of the verdicts: for each assumption, a training problem on
which it provably holds and one on which it provably fails (or, for the fitted forms, on
which it holds only by construction), trained for real through the probes
(:class:`optprobe.LoopProbes`) and judged from the run's verdicts.json.

- convexity along the step (inst_gap, inst_gap_old): a convex least-squares loss, where
  D_t − ⟨g_t, Δ_t⟩ = ½ΔᵀHΔ ≥ 0 on every step, against the same loss negated (concave);
- the descent bound with the run's L: gradient descent on a quadratic with η λ_max < 2, where
  the bound holds on every step, against η λ_max = 2.5 started where the flat direction
  dominates, so the loss falls while the bound with L ≈ λ_max predicts no decrease;
- (L0,L1)-smoothness: f(w) = mean exp(w x), whose curvature grows with the gradient
  (informative), against a one-dimensional quadratic, whose curvature is a constant (held
  by construction: uninformative);
- the gap to x* (ref_gap): the convex least-squares loss with x* its minimizer, against the
  concave one;
- affine variance: per-example gradients with multiplicative noise, tr Σ ∝ ‖G‖²
  (informative), against additive noise, tr Σ constant (uninformative); bounded variance on
  additive noise holds by construction (uninformative).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from optprobe.analysis.verdicts import RunVerdict, verdict_table
from optprobe.integration.plain_loop import LoopProbes


@pytest.fixture(autouse=True)
def _float64():
    """Exact controls: rounding far below every margin (the default dtype is restored)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def train(tmp_path, net, loss, batch, lr, steps, probes=None) -> RunVerdict:
    """Full-batch gradient descent through LoopProbes; the run's verdicts.json."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    folder = tmp_path / "run"
    with LoopProbes(net, loss, probes=probes or ["step"], folder=folder) as run:
        for _ in range(steps):
            value = run.loss(batch)
            value.backward()
            with run.step(batch, value, optimizer):
                optimizer.step()
            optimizer.zero_grad()
    return RunVerdict.from_dict(json.loads((folder / "verdicts.json").read_text()))


def regression(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(32, generator=g)
    net = nn.Linear(3, 1, bias=False)
    nn.init.zeros_(net.weight)
    return net, (x, y)


def least_squares(net, batch):
    x, y = batch
    return 0.5 * (net(x).squeeze(-1) - y).pow(2).mean()


def fraction(verdict: RunVerdict, verdict_id: str) -> float:
    entry = verdict.get(verdict_id)
    assert entry is not None and entry.checked > 0, verdict_id
    return entry.fraction


def test_convexity_holds_on_a_convex_loss_and_fails_on_a_concave_one(tmp_path):
    net, batch = regression()
    convex = train(tmp_path / "convex", net, least_squares, batch, lr=0.1, steps=12)
    assert fraction(convex, "inst_gap:valid:same_batch") == 1.0
    assert fraction(convex, "inst_gap_old:same_batch") == 1.0
    net, batch = regression()
    nn.init.constant_(net.weight, 0.3)

    def concave(net, batch):
        return -least_squares(net, batch)

    concave_run = train(tmp_path / "concave", net, concave, batch, lr=0.01, steps=12)
    assert fraction(concave_run, "inst_gap:valid:same_batch") == 0.0
    assert fraction(concave_run, "inst_gap_old:same_batch") == 0.0


def test_gap_to_x_star_holds_on_a_convex_loss_and_fails_on_a_concave_one(tmp_path):
    """ref_gap: f(x_t) − f(x*) − ⟨g_t, x_t − x*⟩ ≤ 0 for convex f, whatever x* is."""
    for name, sign, expected in (("convex", 1.0, 1.0), ("concave", -1.0, 0.0)):
        net, batch = regression()
        x, y = batch
        x_star = torch.linalg.lstsq(x, y.unsqueeze(-1)).solution.T  # the minimizer
        ckpt = tmp_path / f"{name}_x_star.ckpt"
        torch.save({"state_dict": {"net.weight": x_star}}, ckpt)
        nn.init.constant_(net.weight, 0.3)

        def loss(net, batch, sign=sign):
            return sign * least_squares(net, batch)

        probes = {"step": {}, "reference": {"ckpt": str(ckpt)}}
        lr = 0.1 if sign > 0 else 0.01
        run = train(tmp_path / name, net, loss, batch, lr=lr, steps=9, probes=probes)
        assert fraction(run, "ref_gap") == expected, name
        # reported by thirds of the run (late steps are near x* by construction)
        phases = run.get("ref_gap").decomposition
        assert phases == {"early": expected, "middle": expected, "late": expected}
        assert "held by thirds of the run" in verdict_table(run)


class Diagonal(nn.Module):
    """f(w) = ½ Σ λ_i (w_i − b_i)² with λ = (10, 1): the batch is not used."""

    def __init__(self, start) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(start))

    def forward(self, _):
        return 0.5 * (torch.tensor([10.0, 1.0]) * self.w.pow(2)).sum()


def quadratic(net, batch):
    return net(batch)


def test_descent_bound_holds_below_the_edge_and_fails_beyond_it(tmp_path):
    batch = torch.zeros(4, 1)
    stable = train(tmp_path / "stable", Diagonal([1.0, 1.0]), quadratic, batch, lr=0.05, steps=10)
    assert fraction(stable, "descent_bound:path:same_batch") == 1.0
    parts = stable.get("descent_bound:path:same_batch").decomposition
    assert parts["bound_valid"] == parts["predicts_decrease"] == parts["scored"] == 10
    # η λ_max = 2.5: the steep direction grows 1.5x a step from 1e-3, the flat one shrinks
    # from 10 by 0.75x, so the loss falls for the first steps and rises once the steep one
    # dominates (those steps are set apart: D ≥ 0). By then smooth_lip ≈ λ_max = 10 > 2/η,
    # so with the run's L the bound ⟨g, Δ⟩ + (L/2)‖Δ‖² is positive on every step: it predicts
    # no progress on the steps that made some.
    unstable = train(
        tmp_path / "unstable", Diagonal([1e-3, 10.0]), quadratic, batch, lr=0.25, steps=16
    )
    entry = unstable.get("descent_bound:path:same_batch")
    assert entry.checked >= 5 and entry.no_progress >= 1 and entry.fraction == 0.0
    # decomposed: the bound with the run's L is valid on every scored step, so the verdict
    # is exactly the step-size condition L < 2|⟨g,Δ⟩|/‖Δ‖², which fails on all of them
    parts = entry.decomposition
    assert parts["bound_valid"] == parts["scored"] == entry.checked
    assert parts["predicts_decrease"] == 0 and parts["fraction_of_probed"] == 0.0
    # with the L of the steps so far (L_past), the early steps' L is the flat direction's:
    # the bound predicts a decrease but is not valid once the steep direction takes over
    past = unstable.get("descent_bound:past:same_batch").decomposition
    assert past["bound_valid"] < past["scored"] and past["predicts_decrease"] > 0


def test_l0l1_is_informative_where_curvature_grows_with_the_gradient(tmp_path):
    x = torch.linspace(0.5, 1.5, 16).reshape(-1, 1)

    def exp_loss(net, batch):
        return torch.exp(net(batch)).mean()

    net = nn.Linear(1, 1, bias=False)
    nn.init.constant_(net.weight, 2.0)
    grows = train(tmp_path / "exp", net, exp_loss, x, lr=0.02, steps=60)
    assert grows.get("l0l1_smooth:same_batch").informative is True

    def parabola(net, batch):
        return 0.5 * (net(batch) - 1.0).pow(2).mean()

    net = nn.Linear(1, 1, bias=False)
    nn.init.constant_(net.weight, 5.0)
    constant = train(tmp_path / "parabola", net, parabola, x, lr=0.1, steps=60)
    entry = constant.get("l0l1_smooth:same_batch")
    assert entry.fraction >= 0.9 and entry.informative is False  # held, by construction


def test_affine_variance_is_informative_only_where_the_noise_scales_with_the_gradient(tmp_path):
    g = torch.Generator().manual_seed(0)
    scales = torch.rand(32, 1, generator=g) * 2.0  # multiplicative: g_i = s_i (w − 1)
    offsets = torch.randn(32, 1, generator=g)  # additive: g_i = w − y_i
    probes = {"step": {}, "noise": {"every_n_steps": 1}}

    def multiplicative(net, batch):
        return (0.5 * batch * (net.weight - 1.0).pow(2)).mean()

    def additive(net, batch):
        return (0.5 * (net.weight - batch).pow(2)).mean()

    net = nn.Linear(1, 1, bias=False)
    nn.init.constant_(net.weight, 6.0)
    scaled = train(tmp_path / "mult", net, multiplicative, scales, lr=0.1, steps=60, probes=probes)
    assert scaled.get("affine_variance").informative is True
    net = nn.Linear(1, 1, bias=False)
    nn.init.constant_(net.weight, 6.0)
    flat = train(tmp_path / "add", net, additive, offsets, lr=0.1, steps=60, probes=probes)
    assert flat.get("affine_variance").informative is False
    bounded = flat.get("bounded_variance")
    assert bounded.fraction >= 0.9 and bounded.informative is False  # held, by construction
