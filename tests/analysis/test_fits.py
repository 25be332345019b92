"""Interleaved-block fits: does the L1 (or σ1²) term beat a constant-only fit out of sample?"""

from __future__ import annotations

import numpy as np
import pytest
from job_folders import write_sweep

from optprobe.analysis.fits import interleaved_split, slope_comparison
from optprobe.analysis.runs import load_local_runs
from optprobe.analysis.stats import pinball_loss, quantile_regression_line
from optprobe.analysis.sweep import build_tables


def test_a_real_slope_beats_the_constant():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 3, 200)
    y = 1.0 + 2.0 * x + rng.uniform(0, 0.3, 200)
    result = slope_comparison(x, y, 0.95)
    assert result.beats_constant and result.gain > 0.5 and result.n_check == 100


def test_a_slope_that_does_not_generalize_loses_by_hand():
    """y follows x on the fitting blocks and 2 - x on the checking blocks: the fitted line
    predicts the wrong trend, the constant does better, exactly as computed by hand."""
    n = 100
    x = np.linspace(0.0, 1.0, n)
    fit, check = interleaved_split(n)
    y = x.copy()
    y[check] = 2.0 - x[check]
    result = slope_comparison(x, y, 0.9)
    a, b = quantile_regression_line(x[fit], y[fit], 0.9)
    level = np.quantile(y[fit], 0.9)
    assert result.loss_line == pytest.approx(pinball_loss(y[check] - (a + b * x[check]), 0.9))
    assert result.loss_constant == pytest.approx(pinball_loss(y[check] - level, 0.9))
    assert result.beats_constant is False and result.gain < 0


def test_too_few_steps_are_not_judged():
    result = slope_comparison([1.0], [2.0], 0.9)
    assert result.n_check == 0 and result.beats_constant is None


def test_runs_table_reports_the_slope_test(tmp_path):
    """The hand-written jobs log smooth_lip = 1 + 2 ‖g‖ exactly: the L1 term is the whole
    story (gain 1); the noise trace does not depend on a logged x, so no column for it."""
    write_sweep(tmp_path, optimizers=("sgdm",), seeds=(0, 1, 2))
    runs = build_tables(load_local_runs(tmp_path)).runs
    assert runs["oos_beats_constant:l0l1_smooth"].tolist() == [True, True, True]
    assert runs["oos_gain:l0l1_smooth"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert "oos_gain:affine_variance" not in runs
