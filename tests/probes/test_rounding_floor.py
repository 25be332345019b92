"""The rounding floor on real training: smooth_eff (and so L_eff_*) is undefined, not noise, where
the loss change is below the losses' rounding."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from harness import fit
from sklearn.datasets import load_digits

from optprobe.analysis.verdicts import verdict_from_metrics
from optprobe.models.simple import LogisticRegression
from optprobe.probes.step import StepProbe


def test_logistic_regression_with_tiny_steps_reports_no_rounding_noise_constant():
    """Convex logistic regression in float32: at lr 1e-4 the remainder D − <g,Δ> is below the
    losses' rounding, and 2 (D − <g,Δ>)/‖Δ‖² is noise far above the true curvature along the
    step (the float64 run's); the probe leaves smooth_eff undefined there, so no L_eff."""
    digits = load_digits()
    x = torch.tensor(digits.data[:512] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(digits.target[:512])

    def run(lr: float, dtype: torch.dtype):
        torch.manual_seed(0)
        net = LogisticRegression((1, 8, 8), 10).to(dtype)
        opt = lambda p: torch.optim.SGD(p, lr=lr)  # noqa: E731
        _, _, _, sink = fit(
            net, x.to(dtype), y, [StepProbe()], steps=20, batch_size=64, optimizer=opt
        )
        df = pd.DataFrame.from_dict(sink.rows, orient="index").sort_index()
        df.insert(0, "step", df.index.astype(float))
        return df, verdict_from_metrics(df)

    _, exact = run(1e-4, torch.float64)
    tiny, noisy = run(1e-4, torch.float32)
    raw = 2 * tiny["step/inst_gap_old"] / tiny["step/update_norm"] ** 2  # smooth_eff before
    assert raw.abs().max() > 20 * exact.constants["L_eff_max"]  # noise, would explode L_eff
    assert noisy.undefined == {"step/smooth_eff": 20}
    assert not any(k.startswith("L_eff") for k in noisy.constants)
    assert "step/smooth_eff" not in tiny.columns  # never logged where undefined
    # steps large enough to measure: the float32 constant is the float64 one
    _, exact = run(1e-2, torch.float64)
    _, measured = run(1e-2, torch.float32)
    assert measured.undefined == {"step/smooth_eff": 0}
    assert measured.constants["L_eff_max"] == pytest.approx(exact.constants["L_eff_max"], rel=0.05)


def test_quadrature_measures_smooth_eff_where_the_loss_difference_cannot():
    """The same float32 run at lr 1e-4: smooth_eff is undefined on every step, but Simpson's
    rule from gradients (no loss difference) gives smooth_eff_quad on every step, equal to the
    float64 run's smooth_eff (which is defined there)."""
    digits = load_digits()
    x = torch.tensor(digits.data[:512] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(digits.target[:512])

    def run(dtype: torch.dtype):
        torch.manual_seed(0)
        net = LogisticRegression((1, 8, 8), 10).to(dtype)
        opt = lambda p: torch.optim.SGD(p, lr=1e-4)  # noqa: E731
        probe = StepProbe(quadrature=True)
        _, _, _, sink = fit(net, x.to(dtype), y, [probe], steps=20, batch_size=64, optimizer=opt)
        return sink

    exact, tiny = run(torch.float64), run(torch.float32)
    assert not tiny.series("step/smooth_eff")  # undefined within the losses' rounding
    quad = tiny.series("step/smooth_eff_quad")
    reference = exact.series("step/smooth_eff")
    assert len(quad) == len(reference) == 20
    for step, value in reference.items():
        assert value > 0  # convex: positive curvature along every step
        assert quad[step] == pytest.approx(value, rel=0.02)
