"""Reference-point probes: recomputation, convex case, replay, bad checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from harness import fit
from test_step_probe import batch_loss_grad, data, flat

from optprobe.estimators.identities import reference_quantities
from optprobe.models.simple import MLP
from optprobe.probes.reference import ReferenceProbe


def reference_ckpt(tmp_path, net, x, y, steps, **kw):
    trainer, module, _, _ = fit(copy.deepcopy(net), x, y, steps=steps, **kw)
    path = tmp_path / "ref.ckpt"
    trainer.save_checkpoint(path)
    return path, {n: p.detach().clone() for n, p in module.net.named_parameters()}


def test_logged_values_match_recomputation_and_replay_ends_at_x_star(tmp_path):
    torch.manual_seed(0)
    net = MLP((1, 4, 4), 3, hidden=(8,), activation="tanh").double()
    x, y = data()
    opt = lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9)  # noqa: E731
    ckpt, x_star = reference_ckpt(tmp_path, net, x, y, steps=6, optimizer=opt)
    probe = ReferenceProbe(ckpt=str(ckpt))
    _, _, rec, sink = fit(copy.deepcopy(net), x, y, [probe], steps=6, optimizer=opt)
    gaps = list(sink.series("ref/gap").values())
    pls = list(sink.series("ref/pl").values())
    ratios = list(sink.series("ref/ratio").values())
    assert len(gaps) == 6
    cum_lin = cum_excess = 0.0
    for t, s in enumerate(rec.steps):
        f_x, g = batch_loss_grad(net, s.params, s.batches)
        f_star, _ = batch_loss_grad(net, x_star, s.batches)
        diff = flat(s.params) - flat(x_star)
        gap = f_x - f_star - (g @ diff).item()
        assert gaps[t] == pytest.approx(gap, rel=1e-10, abs=1e-13)
        if f_x > f_star:
            assert pls[t] == pytest.approx((g @ g).item() / (2 * (f_x - f_star)), rel=1e-10)
        cum_lin += (g @ diff).item()
        cum_excess += f_x - f_star
        assert ratios[t] == pytest.approx(cum_lin / cum_excess, rel=1e-10)
    assert probe.replay == {"final_rel_dist": 0.0, "matches": True}


def test_convex_logistic_regression_gap_is_nonpositive(tmp_path):
    from optprobe.models.simple import LogisticRegression

    x, y = data(n=128, dim=(1, 8, 8), classes=4, seed=1)
    net = LogisticRegression((1, 8, 8), 4).double()
    opt = lambda p: torch.optim.SGD(p, lr=0.5)  # noqa: E731
    ckpt, _ = reference_ckpt(tmp_path, net, x, y, steps=16, batch_size=32, optimizer=opt)
    probe = ReferenceProbe(ckpt=str(ckpt))
    _, _, _, sink = fit(copy.deepcopy(net), x, y, [probe], steps=16, batch_size=32, optimizer=opt)
    assert max(sink.series("ref/gap").values()) <= 1e-12
    assert probe.final_summary()["held"]["ref_gap"]["fraction"] == 1.0


def test_replay_mismatch_is_reported(tmp_path, capsys):
    x, y = data()
    net = MLP((1, 4, 4), 3, hidden=(8,)).double()
    ckpt, _ = reference_ckpt(tmp_path, net, x, y, steps=6)
    probe = ReferenceProbe(ckpt=str(ckpt))
    fit(copy.deepcopy(net), x, y, [probe], steps=6, seed=1)
    assert "did not replay" in capsys.readouterr().out
    assert probe.replay["matches"] is False


def test_missing_or_mismatched_checkpoint_fails_at_setup(tmp_path):
    x, y = data()
    with pytest.raises(FileNotFoundError, match="probes.reference.ckpt"):
        fit(
            MLP((1, 4, 4), 3, hidden=(8,)).double(),
            x,
            y,
            [ReferenceProbe(ckpt=str(tmp_path / "nope.ckpt"))],
            steps=1,
        )
    ckpt, _ = reference_ckpt(tmp_path, MLP((1, 4, 4), 3, hidden=(8,)).double(), x, y, steps=1)
    with pytest.raises(ValueError, match="does not fit the model"):
        fit(
            MLP((1, 4, 4), 3, hidden=(5,)).double(), x, y, [ReferenceProbe(ckpt=str(ckpt))], steps=1
        )


def test_reference_quantities_closed_form():
    g = torch.tensor([1.0, 2.0], dtype=torch.float64)
    x = torch.tensor([3.0, 1.0], dtype=torch.float64)
    x_ref = torch.tensor([1.0, 1.0], dtype=torch.float64)
    q = reference_quantities(5.0, 1.0, g, x, x_ref)
    assert q == pytest.approx(
        {"gap": 2.0, "excess": 4.0, "lin": 2.0, "pl": 5 / 8, "weak_cvx": 1.0, "dist": 2.0}
    )


def test_weak_convexity_is_zero_within_the_held_tolerance():
    """A gap within the losses' rounding counts as held (ref_gap) and gives ρ = 0, not
    gap / (½‖x − x*‖²), which near x* is rounding noise divided by a tiny distance."""
    g = torch.zeros(2, dtype=torch.float64)
    x = torch.tensor([1.0, 1.0 + 1e-4], dtype=torch.float64)
    x_ref = torch.tensor([1.0, 1.0], dtype=torch.float64)
    q = reference_quantities(1.0 + 1e-9, 1.0, g, x, x_ref, tol=4e-9)
    assert 0 < q["gap"] <= 4e-9 and q["weak_cvx"] == 0.0
    q = reference_quantities(1.0 + 1e-6, 1.0, g, x, x_ref, tol=4e-9)
    assert q["weak_cvx"] == pytest.approx(q["gap"] / (0.5 * 1e-8))
