"""Integration tests of the curvature probe callback against dense Hessians.

Every reference is computed independently of the probe: the dense Hessian of the loss at the
parameters x_t and on the batch that the harness recorder saw at step t (torch.func.hessian on
a flat float64 vector), its eigenvalues by ``torch.linalg.eigvalsh``, and for Adam the
preconditioner rebuilt from a snapshot of the optimizer state.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from harness import StartedFlag, fit, make_data, make_mlp
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn
from torch.func import functional_call

from optprobe.estimators.functional import supervised
from optprobe.models.lit_module import cross_entropy
from optprobe.probes.curvature import CurvatureProbe
from optprobe.probes.target import ProbedModel

LANCZOS = {"lanczos_iters": 400, "tol": 1e-8}


class TinyBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def dense_hessian(net: nn.Module, params: dict[str, Tensor], batches) -> Tensor:
    """Hessian of the mean cross-entropy over all recorded micro-batches at ``params``."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat = torch.cat([params[n].reshape(-1) for n in names]).to(torch.float64)

    def loss(vec: Tensor) -> Tensor:
        parts = torch.split(vec, sizes)
        state = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}
        return cross_entropy(functional_call(net, state, (x,)), y)

    return torch.func.hessian(loss)(flat)


def test_eigenvalues_trace_esd_and_sharpness_match_dense_hessian(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the harness trainer's default_root_dir is the cwd
    x, y = make_data()
    net = make_mlp()
    probe = CurvatureProbe(every_n_steps=1, trace_max_matvecs=100, esd=True, **LANCZOS)
    trainer, _, recorder, sink = fit(net, x, y, callbacks=[probe], steps=3)

    assert trainer.default_root_dir == str(tmp_path)
    lam_max, lam_min = sink.series("curv/lambda_max"), sink.series("curv/lambda_min")
    trace, stderr = sink.series("curv/trace"), sink.series("curv/trace_stderr")
    assert sorted(lam_max) == [0, 1, 2] and len(recorder.steps) == 3
    assert probe.num_probed == 3 and probe.num_skipped == 0
    for t, rec in enumerate(recorder.steps):
        hess = dense_hessian(net, rec.params, rec.batches)
        evals = torch.linalg.eigvalsh(hess)
        assert lam_max[t] == pytest.approx(float(evals[-1]), rel=1e-3)
        assert lam_min[t] == pytest.approx(float(evals[0]), rel=1e-3)
        assert sink.series("curv/lanczos_converged")[t] == 1.0
        error = sink.series("curv/lambda_min_error")[t]
        assert abs(lam_min[t] - float(evals[0])) <= error  # the bound holds
        known = lam_min[t] < 0 or lam_min[t] > error
        assert sink.series("curv/lambda_min_sign_known")[t] == float(known)
        assert 1 <= sink.series("curv/lanczos_matvecs")[t] <= hess.shape[0]
        assert 0 < stderr[t] < math.inf
        assert abs(trace[t] - float(torch.trace(hess))) <= 3 * stderr[t]
        assert sink.series("curv/sharpness_ratio")[t] == pytest.approx(rec.lr * lam_max[t])
        assert sink.series("curv/stability_threshold")[t] == 2.0
        assert "curv/precond_lambda_max" not in sink.rows[t]
        # the spectral density: a normalized density covering the spectrum
        assert sink.series("curv/esd_saved")[t] == 1.0
        saved = np.load(tmp_path / "probes" / "esd" / f"step_{t}.npz")
        grid, density = saved["grid"], saved["density"]
        assert np.all(density >= 0)
        area = float(np.sum(0.5 * (density[1:] + density[:-1]) * np.diff(grid)))
        assert area == pytest.approx(1.0, abs=1e-9)
        spread = float(evals[-1] - evals[0])
        assert grid[0] <= float(evals[0]) + 0.05 * spread
        assert grid[-1] >= float(evals[-1]) - 0.05 * spread
        png = tmp_path / "probes" / "esd" / f"step_{t}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_subsampled_hvps_measure_the_hessian_of_the_drawn_examples(monkeypatch):
    """hvp_examples=k: each firing draws k distinct examples of the step's batch, and λ_max,
    λ_min and the trace are those of the dense Hessian of the loss on exactly those."""
    x, y = make_data()
    net = make_mlp()
    probe = CurvatureProbe(every_n_steps=1, trace_max_matvecs=100, hvp_examples=5, **LANCZOS)
    drawn = []
    draw = probe.hvp_batch

    def recording(batch):
        sub = draw(batch)
        drawn.append((batch, sub))
        return sub

    monkeypatch.setattr(probe, "hvp_batch", recording)
    _, _, recorder, sink = fit(net, x, y, callbacks=[probe], steps=3, batch_size=16)
    assert sink.series("curv/hvp_examples") == {0: 5.0, 1: 5.0, 2: 5.0}
    picks = []
    for t, (rec, ((inputs, targets), (sx, sy))) in enumerate(zip(recorder.steps, drawn)):
        rows = [int(torch.nonzero((inputs == row).flatten(1).all(1))[0]) for row in sx]
        assert len(set(rows)) == 5 and torch.equal(targets[rows], sy)  # 5 distinct examples
        picks.append(rows)
        evals = torch.linalg.eigvalsh(dense_hessian(net, rec.params, [(sx, sy)]))
        full = torch.linalg.eigvalsh(dense_hessian(net, rec.params, rec.batches))
        assert sink.series("curv/lambda_max")[t] == pytest.approx(float(evals[-1]), rel=1e-3)
        assert sink.series("curv/lambda_min")[t] == pytest.approx(float(evals[0]), rel=1e-3)
        assert abs(float(evals[-1] - full[-1])) > 1e-3 * float(full[-1])  # another function
        trace, stderr = sink.series("curv/trace")[t], sink.series("curv/trace_stderr")[t]
        assert abs(trace - float(evals.sum())) <= 3 * stderr
    assert len({tuple(p) for p in picks}) > 1  # a new draw per firing


def test_subsample_no_smaller_than_the_batch_is_the_whole_batch():
    x, y = make_data(n=8)
    batch = (x, y)
    whole = CurvatureProbe(hvp_examples=8).hvp_batch(batch)
    assert whole is batch and whole[0] is x and whole[1] is y
    assert CurvatureProbe().hvp_batch(batch) is batch


class AdamStateSnapshot(Callback):
    """Copies (exp_avg_sq, step) of every trainable parameter right after each optimizer step:
    the second moment v_t (with g_t) the step divided by."""

    def __init__(self) -> None:
        self.steps: list[list[tuple[Tensor, float]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        snap = []
        for p in pl_module.net.parameters():
            state = opt.state[p]
            snap.append((state["exp_avg_sq"].clone(), float(state["step"])))
        self.steps.append(snap)


def test_adam_preconditioned_sharpness_matches_dense():
    x, y = make_data()
    net = make_mlp()
    lr, betas, eps = 1e-2, (0.9, 0.999), 1e-8
    snapshot = AdamStateSnapshot()
    probe = CurvatureProbe(every_n_steps=1, trace_max_matvecs=2, **LANCZOS)
    _, _, recorder, sink = fit(
        net,
        x,
        y,
        callbacks=[snapshot, probe],
        steps=3,
        optimizer=lambda params: torch.optim.Adam(params, lr=lr, betas=betas, eps=eps),
    )
    precond = sink.series("curv/precond_lambda_max")
    # the step's own preconditioner P_t (read after the step): step 0 has one too
    assert sorted(precond) == [0, 1, 2]
    for t in (0, 1, 2):
        rec, snap = recorder.steps[t], snapshot.steps[t]
        hess = dense_hessian(net, rec.params, rec.batches)
        diag = torch.cat(
            [((v / (1 - betas[1] ** step)).sqrt() + eps).reshape(-1) for v, step in snap]
        ).to(torch.float64)
        scale = diag.rsqrt()
        expected = float(torch.linalg.eigvalsh(scale[:, None] * hess * scale[None, :])[-1])
        # same spectrum as the non-symmetric D^-1 H
        nonsym = torch.linalg.eigvals(hess / diag[:, None]).real.max()
        assert float(nonsym) == pytest.approx(expected, rel=1e-6)
        assert precond[t] == pytest.approx(expected, rel=1e-3)
        assert sink.series("curv/precond_lanczos_converged")[t] == 1.0
        assert sink.series("curv/sharpness_ratio")[t] == pytest.approx(lr * precond[t])
        assert sink.series("curv/stability_threshold")[t] == pytest.approx(3.8 / 0.1)
        plain = float(torch.linalg.eigvalsh(hess)[-1])
        assert sink.series("curv/lambda_max")[t] == pytest.approx(plain, rel=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "threshold"),
    [
        ({}, 2.0),
        ({"momentum": 0.9}, 3.8),
        ({"momentum": 0.5, "dampening": 0.5}, 6.0),
        ({"momentum": 0.9, "nesterov": True}, 3.8 / 2.8),
    ],
)
def test_sgd_stability_thresholds(kwargs, threshold):
    x, y = make_data(16)
    net = make_mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, **kwargs)
    probe = CurvatureProbe(lanczos_iters=30, trace_max_matvecs=2)
    values, esd = probe.measure(ProbedModel(net, supervised(cross_entropy)), (x, y), opt)
    assert esd is None
    assert values["curv/stability_threshold"] == pytest.approx(threshold)
    assert values["curv/sharpness_ratio"] == pytest.approx(0.05 * values["curv/lambda_max"])


def test_forward_over_reverse_matches_double_backward():
    x, y = make_data(16)
    net = make_mlp()
    values = {}
    for hvp in ("double_backward", "forward_over_reverse"):
        probe = CurvatureProbe(hvp=hvp, trace_max_matvecs=3, seed=1, **LANCZOS)
        values[hvp], _ = probe.measure(ProbedModel(net, supervised(cross_entropy)), (x, y))
    for key in ("curv/lambda_max", "curv/lambda_min", "curv/trace"):
        a, b = values["double_backward"][key], values["forward_over_reverse"][key]
        assert a == pytest.approx(b, rel=1e-8)


def test_forward_over_reverse_on_batchnorm_fails_at_setup():
    x, y = make_data(32)

    started = StartedFlag()
    torch.manual_seed(0)
    probe = CurvatureProbe(every_n_steps=1, hvp="forward_over_reverse")
    with pytest.raises(ValueError, match="BatchNorm2d 'bn'.*hvp=double_backward"):
        fit(TinyBNNet().double(), x, y, callbacks=[started, probe], steps=2)
    assert not started.started
    # auto (double backward) runs with BatchNorm in training mode; values are logged on the
    # probed steps only (never repeated, stale, on the steps in between)
    probe = CurvatureProbe(every_n_steps=2, trace_max_matvecs=4, lanczos_iters=10)
    assert probe.resolved_settings() == {"hvp": "double_backward"}
    torch.manual_seed(0)
    _, _, _, sink = fit(TinyBNNet().double(), x, y, callbacks=[probe], steps=3)
    assert all(math.isfinite(v) for v in sink.series("curv/lambda_max").values())
    assert sorted(sink.series("curv/trace")) == [0, 2]
    summary = probe.final_summary()
    assert (summary["probed"], summary["skipped"], summary["hvp"]) == (2, 0, "double_backward")
    lams = sink.series("curv/lambda_max")
    assert summary["last_lambda_max"] == lams[2] and summary["max_lambda_max"] == max(lams.values())


def test_generator_state_round_trip():
    x, y = make_data()
    net = make_mlp()
    kwargs = {"every_n_steps": 1, "lanczos_iters": 5, "trace_max_matvecs": 5, "seed": 3}
    probe = CurvatureProbe(**kwargs)
    _, module, _, _ = fit(net, x, y, callbacks=[probe], steps=2)
    buffer = io.BytesIO()
    torch.save(probe.state_dict(), buffer)
    buffer.seek(0)
    resumed = CurvatureProbe(**kwargs)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.num_probed == 2
    # the warm start (the last firing's Ritz vectors) is checkpointed with the generator
    assert probe.ritz is not None and torch.equal(resumed.ritz, probe.ritz)
    fresh = CurvatureProbe(**kwargs)  # same seed, generator not advanced
    batch, model = (x[:16], y[:16]), ProbedModel(module.net, module.probe_loss)
    expected, _ = probe.measure(model, batch)
    got, _ = resumed.measure(model, batch)
    unrelated, _ = fresh.measure(model, batch)
    assert got == expected
    assert unrelated["curv/trace"] != expected["curv/trace"]


def test_non_finite_steps_are_skipped_not_fatal():
    x, y = make_data()
    x[:, 0, 0, 0] = math.nan  # every batch has a NaN loss
    probe = CurvatureProbe(every_n_steps=1, lanczos_iters=5, trace_max_matvecs=2)
    _, _, recorder, sink = fit(make_mlp(), x, y, callbacks=[probe], steps=2)
    assert len(recorder.steps) == 2
    assert sink.series("curv/skipped") == {0: 1.0, 1: 2.0}
    assert sink.series("curv/lambda_max") == {}
    assert probe.num_skipped == 2 and probe.num_probed == 0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"every_n_steps": 0}, "probes.curvature.every_n_steps"),
        ({"batch": "random"}, "probes.curvature.batch"),
        ({"hvp": "bogus"}, "probes.curvature.hvp"),
        ({"lanczos_iters": 0}, "probes.curvature.lanczos_iters"),
        ({"tol": 0.0}, "probes.curvature.tol"),
        ({"error_bound": "kato"}, "probes.curvature.error_bound"),
        ({"trace_max_matvecs": 1}, "probes.curvature.trace_max_matvecs"),
        ({"trace_rel_se": 0.0}, "probes.curvature.trace_rel_se"),
        ({"warm_start": "no"}, "probes.curvature.warm_start"),
        ({"esd": "yes"}, "probes.curvature.esd"),
        ({"esd_iters": 0}, "probes.curvature.esd_iters"),
        ({"seed": 1.5}, "probes.curvature.seed"),
        ({"hvp_examples": 0}, "probes.curvature.hvp_examples"),
        ({"hutchinson_samples": 10}, "probes.curvature.hutchinson_samples was removed"),
    ],
)
def test_argument_validation(kwargs, key):
    with pytest.raises(ValueError, match=key):
        CurvatureProbe(**kwargs)
