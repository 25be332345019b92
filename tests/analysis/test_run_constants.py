"""Constants of one run: what each is, and that none is made of rounding noise."""

from __future__ import annotations

import numpy as np
import pytest
from frames import frame

from optprobe.analysis.verdicts import verdict_from_metrics


def test_constants_equal_numpy():
    rng = np.random.default_rng(3)
    n, nan = 60, np.nan
    lip = rng.lognormal(size=n)
    lip[[4, 9]] = nan
    remainder = rng.normal(size=n)  # D − <g,Δ>
    norm = rng.uniform(0.5, 2.0, n)
    excess = rng.uniform(-0.1, 2.0, n)
    lin = excess * rng.uniform(0.2, 3.0, n)
    gap, dist = rng.normal(size=n), rng.uniform(0.5, 2, n)
    unbiased = rng.normal(1.0, 1.0, n)
    unbiased[::2] = nan  # the noise probe ran on every other step
    pl = rng.uniform(0.0, 3.0, n)
    lam = np.full(n, nan)
    lam[::10] = rng.uniform(1, 9, 6)
    cov = rng.uniform(1, 3, n)
    df = frame(
        n,
        step__smooth_lip=lip,
        step__inst_gap_old=remainder,
        step__update_norm=norm,
        step__smooth_eff=2 * remainder / norm**2,
        ref__excess=excess,
        ref__lin=lin,
        ref__gap=gap,
        ref__dist=dist,
        ref__pl=pl,
        noise__grad_sq_norm_unbiased=unbiased,
        curv__lambda_max=lam,
        noise__trace_cov=cov,
    ).sample(frac=1.0, random_state=1)  # row order must not matter
    c = verdict_from_metrics(df, quantile=0.9).constants
    ok = lip[~np.isnan(lip)]
    assert c["L_lip_q50"] == pytest.approx(np.quantile(ok, 0.5))
    assert c["L_lip_q90"] == pytest.approx(np.quantile(ok, 0.9))
    assert c["L_lip_max"] == pytest.approx(ok.max())
    eff = 2 * remainder / norm**2
    assert c["L_eff_q50"] == pytest.approx(np.quantile(eff, 0.5))
    assert c["L_eff_max"] == pytest.approx(eff.max())
    assert c["L_path"] == pytest.approx(max(ok.max(), np.nanmax(lam)))
    # γ: a low quantile of the per-step ratio (steps with a positive excess), not an average
    pos = excess > 0
    assert c["gamma"] == pytest.approx(np.quantile(lin[pos] / excess[pos], 0.1))
    # ρ: the gap per ½ distance², 0 where the gap is not positive (tolerance 0 here)
    assert c["rho"] == pytest.approx(np.quantile(np.where(gap > 0, gap / (0.5 * dist**2), 0), 0.9))
    # PL: noise-corrected where the noise probe ran; pl_raw from the minibatch ‖g‖²
    both = pos & ~np.isnan(unbiased)
    assert c["pl"] == pytest.approx(np.quantile(unbiased[both] / (2 * excess[both]), 0.1))
    assert c["pl_raw"] == pytest.approx(np.quantile(pl[pos & (pl > 0)], 0.1))
    assert c["sigma_sq"] == pytest.approx(np.quantile(cov, 0.9))
    assert c["lambda_max_max"] == pytest.approx(np.nanmax(lam))
    for name in ("L0", "L1", "l0l1_r1", "sigma0_sq", "sigma1_sq"):  # inputs missing: omitted
        assert name not in c


def test_pl_raw_omitted_without_positive_values():
    c = verdict_from_metrics(frame(4, ref__pl=[-1.0, 0.0, -2.0, np.nan])).constants
    assert "pl_raw" not in c and "pl" not in c


def test_rounding_noise_makes_no_constant():
    """smooth_eff is undefined where |D − <g,Δ>| ≤ float_tol (counted), weak_cvx is 0 where the
    gap is within float_tol (the tolerance under which ref_gap counts as held), and the excess
    must exceed it for γ and PL."""
    tol = np.full(4, 1e-6)
    df = frame(
        4,
        step__inst_gap_old=[1e-7, -5e-7, 2e-3, 4e-3],  # the first two are rounding noise
        step__update_norm=[1e-4, 1e-4, 1.0, 1.0],
        step__float_tol=tol,
        ref__gap=[5e-7, 1.0, -1.0, 2e-7],
        ref__dist=[1e-3, 1.0, 1.0, 1e-3],
        ref__excess=[1.0, 5e-7, 1.0, 2.0],
        ref__lin=[0.5, 1.0, 1.0, 1.5],
        ref__float_tol=tol,
    )
    out = verdict_from_metrics(df, quantile=0.5)
    assert out.undefined == {"step/smooth_eff": 2}
    assert out.constants["L_eff_max"] == pytest.approx(8e-3)  # not 2e-7 / 1e-8 = 20
    assert out.constants["rho"] == pytest.approx(0.0)  # gaps 5e-7, 2e-7 within tolerance: 0
    assert out.constants["gamma"] == pytest.approx(np.quantile([0.5, 1.0, 0.75], 0.5))


def test_path_l_leaves_out_a_subsampled_lambda_max():
    """λ_max from HVPs on a subset of the batch is the curvature of another function: the path
    L (and its note) then comes from smooth_lip alone; with the whole batch it is the max."""
    from optprobe.analysis.variant_checks import with_derived_bounds

    n, nan = 20, np.nan
    rng = np.random.default_rng(0)
    lip = rng.uniform(1, 2, n)
    lam = np.full(n, nan)
    lam[::5] = [3.0, 8.0, 4.0, 5.0]  # above every smooth_lip
    columns = dict(
        step__smooth_lip=lip,
        step__inst_gap_old=rng.normal(size=n),
        step__update_norm=rng.uniform(0.5, 2.0, n),
        step__lin_old=rng.normal(size=n),
        curv__lambda_max=lam,
    )
    whole = frame(n, **columns)
    examples = np.where(np.isnan(lam), nan, 8.0)
    subset = frame(n, **columns, curv__hvp_examples=examples)
    assert verdict_from_metrics(whole).constants["L_path"] == pytest.approx(8.0)
    assert verdict_from_metrics(subset).constants["L_path"] == pytest.approx(lip.max())
    _, notes = with_derived_bounds(whole)
    assert "max of step/smooth_lip (20 steps) and curv/lambda_max (4 steps)" in notes["step/path"]
    # the step and key that set L, and that the curvature cadence matters
    assert "set at step 5 by curv/lambda_max" in notes["step/path"]
    assert "a sparser cadence can only lower L" in notes["step/path"]
    _, notes = with_derived_bounds(subset)
    top = int(np.argmax(lip))
    assert notes["step/path"].endswith(
        f"max of step/smooth_lip (20 steps); set at step {top} by step/smooth_lip"
    )
