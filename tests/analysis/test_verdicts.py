"""Tests for optprobe.analysis.verdicts on hand-built metric tables with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from frames import frame

from optprobe.analysis.fits import interleaved_split
from optprobe.analysis.run_intervals import run_interval
from optprobe.analysis.stats import quantile_regression_line
from optprobe.analysis.verdicts import (
    AssumptionVerdict,
    RunVerdict,
    read_metrics_csv,
    verdict_from_metrics,
    verdict_table,
)
from optprobe.assumptions import ASSUMPTIONS, all_variants

Z95 = 1.959963984540054


def hand_wilson(held: int, n: int) -> tuple[float, float]:
    p = held / n
    denom = 1 + Z95**2 / n
    center = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return center - half, center + half


# --------------------------------------------------------------------------- sign checks


def test_inst_gap_73_of_100():
    rng = np.random.default_rng(0)
    gap = np.concatenate([-rng.uniform(0, 1, 72), [0.0], rng.uniform(0.01, 1, 27)])
    rng.shuffle(gap)
    v = verdict_from_metrics(frame(100, step__inst_gap=gap)).get("inst_gap")
    assert v.id == "inst_gap:valid:same_batch" and v.assumption == "inst_gap" and v.headline
    assert v.variant == {"score": "valid", "scheme": "same_batch"}
    assert (v.held, v.checked) == (73, 100)
    assert v.fraction == pytest.approx(0.73)
    assert v.interval_method == "wilson_ess_geyer"
    assert (v.ci_low, v.ci_high) == pytest.approx(run_interval(gap <= 0)[:2], abs=1e-12)
    assert hand_wilson(73, 100)[0] - 0.02 <= v.ci_low  # shuffled: about the Wilson interval
    # the same steps in runs (held first, then failed): strongly autocorrelated, far wider
    runs = verdict_from_metrics(frame(100, step__inst_gap=np.sort(gap))).get("inst_gap")
    assert (runs.held, runs.checked) == (73, 100)
    assert runs.ci_high - runs.ci_low > 3 * (v.ci_high - v.ci_low)
    assert v.label.startswith(ASSUMPTIONS["inst_gap"].label)


def test_sign_checks_and_nan_rows_ignored():
    nan = np.nan
    df = frame(
        8,
        step__inst_gap=[-1, 0, 1, nan, -2, nan, 3, -0.5],  # held 4 of 6
        step__inst_gap_old=[1, 0, -1, 2, nan, nan, nan, -3],  # held 3 of 5
        ref__gap=[nan, nan, -1, -1, 1, 0, nan, nan],  # held 3 of 4
    )
    out = verdict_from_metrics(df)
    assert (out.get("inst_gap").held, out.get("inst_gap").checked) == (4, 6)
    assert (out.get("inst_gap_old").held, out.get("inst_gap_old").checked) == (3, 5)
    assert (out.get("ref_gap").held, out.get("ref_gap").checked) == (3, 4)
    assert out.get("ref_gap").fraction == pytest.approx(0.75)


def test_descent_bound_scores_progress_steps_and_counts_the_others_apart():
    """Among steps with D_t < 0: held when the bound is negative and ≥ D_t; steps with
    D_t ≥ 0 are not failures of the bound, they are counted apart (``no_progress``)."""
    nan = np.nan
    rows = [
        (-1.0, -2.0, True),  # bound above the change, predicts decrease
        (-1.0, -1.0, True),  # equality counts
        (-1.0, -0.5, False),  # change above the bound
        (0.5, 0.2, None),  # no progress (D >= 0): apart
        (0.0, -1.0, False),  # bound = 0 is not < 0
        (-1e-3, 5.0, None),  # no progress: apart
        (nan, -1.0, None),  # not measured: ignored
        (-1.0, nan, None),
    ]
    df = frame(
        len(rows),
        step__descent_bound_past=[r[0] for r in rows],
        step__loss_change=[r[1] for r in rows],
    )
    v = verdict_from_metrics(df).get("descent_bound:past:same_batch")
    assert (v.held, v.checked, v.no_progress) == (2, 4, 2)
    assert (v.ci_low, v.ci_high) == pytest.approx(run_interval([1, 1, 0, 0])[:2], abs=1e-12)
    # summed over every measured step: Σ bound = -2.501 against Σ D = +0.7: no progress summed
    assert (v.sum_rhs, v.sum_lhs) == pytest.approx((-2.501, 0.7))
    assert v.sum_held is None


# --------------------------------------------------------------------------- fitted forms


def odd_blocks(n: int) -> np.ndarray:
    """True on the steps of the checking (odd) blocks of ``fits.interleaved_split``."""
    mask = np.zeros(n, dtype=bool)
    mask[interleaved_split(n)[1]] = True
    return mask


def test_interleaved_blocks_by_hand():
    fit, check = interleaved_split(100)
    assert list(check[:12]) == [*range(10, 20), 30, 31]
    assert list(fit[:12]) == [*range(10), 20, 21]
    assert len(fit) == len(check) == 50
    assert [list(a) for a in interleaved_split(5)] == [[0, 2, 4], [1, 3]]
    assert [list(a) for a in interleaved_split(1)] == [[0], []]
    # uneven: 23 steps in 10 blocks of 2 or 3, every step in exactly one set
    fit, check = interleaved_split(23)
    assert sorted([*fit, *check]) == list(range(23)) and abs(len(fit) - len(check)) <= 3


def test_drift_between_halves_is_not_a_failure():
    """Noise that doubles halfway stays below one constant: the first-half/second-half split
    called this "bounded variance fails on every step"; interleaved blocks do not."""
    cov = np.r_[np.ones(50), 2.0 * np.ones(50)]
    v = verdict_from_metrics(frame(100, noise__trace_cov=cov)).get("bounded_variance")
    assert (v.held, v.checked) == (50, 50)


def test_bounded_variance_out_of_sample():
    cov = np.where(odd_blocks(100), 2.0, 1.0)  # the checking blocks exceed every fitted value
    v = verdict_from_metrics(frame(100, noise__trace_cov=cov)).get("bounded_variance")
    assert (v.held, v.checked) == (0, 50)
    assert v.fraction == 0.0
    steady = verdict_from_metrics(frame(100, noise__trace_cov=np.ones(100)))
    assert (steady.get("bounded_variance").held, steady.get("bounded_variance").checked) == (
        50,
        50,
    )


def test_bounded_variance_fits_the_even_blocks_at_q():
    # Fitting blocks hold 0-9, 20-29, 40-49, 60-69, 80-89: their 0.9 quantile is 84.1, which
    # covers the checking blocks 10-19, 30-39, 50-59, 70-79 but not 90-99.
    cov = np.arange(100.0)
    out = verdict_from_metrics(frame(100, noise__trace_cov=cov), quantile=0.9)
    v = out.get("bounded_variance")
    assert (v.held, v.checked) == (40, 50)
    assert out.constants["sigma_sq"] == pytest.approx(np.quantile(cov, 0.9))


def test_out_of_sample_uses_step_order_not_row_order():
    cov = np.where(odd_blocks(100), 2.0, 1.0)
    df = frame(100, noise__trace_cov=cov).sample(frac=1.0, random_state=0)
    v = verdict_from_metrics(df).get("bounded_variance")
    assert (v.held, v.checked) == (0, 50)


def test_odd_count_and_single_step():
    # 5 steps, 5 blocks: fit on steps 0, 2, 4 (all 1), check steps 1 (5) and 3 (1)
    out = verdict_from_metrics(frame(5, noise__trace_cov=[1, 5, 1, 1, 1]))
    assert (out.get("bounded_variance").held, out.get("bounded_variance").checked) == (1, 2)
    single = verdict_from_metrics(frame(1, noise__trace_cov=[1.0]))
    assert single.get("bounded_variance") is None
    assert single.constants["sigma_sq"] == 1.0


def test_affine_variance_out_of_sample():
    rng = np.random.default_rng(1)
    g2 = rng.uniform(0.1, 5.0, 100)
    law = 0.5 + 2.0 * g2
    same = verdict_from_metrics(frame(100, noise__grad_sq_norm=g2, noise__trace_cov=law))
    v = same.get("affine_variance")
    assert (v.held, v.checked) == (50, 50)
    assert same.constants["sigma0_sq"] == pytest.approx(0.5, abs=1e-6)
    assert same.constants["sigma1_sq"] == pytest.approx(2.0, abs=1e-6)
    doubled = np.where(odd_blocks(100), 2.0 * law, law)
    out = verdict_from_metrics(frame(100, noise__grad_sq_norm=g2, noise__trace_cov=doubled))
    assert out.get("affine_variance").held == 0
    # the bounded form fails too where grad_sq_norm varies: judged independently
    assert out.get("bounded_variance").checked == 50


def test_l0l1_out_of_sample_and_constants():
    rng = np.random.default_rng(2)
    g = rng.uniform(0.0, 3.0, 200)
    lip = 1.0 + 2.0 * g + rng.uniform(0.0, 0.5, 200)
    steady = verdict_from_metrics(frame(200, step__grad_norm=g, step__smooth_lip=lip))
    v = steady.get("l0l1_smooth")
    assert v.checked == 100
    assert 0.85 <= v.fraction <= 1.0
    a, b = quantile_regression_line(g, lip, 0.95)
    assert (steady.constants["L0"], steady.constants["L1"]) == pytest.approx((a, b))
    fitted = a + b * g

    def pinball(r):  # the check loss at q = 0.95, by hand
        return np.sum(np.where(r >= 0, 0.95 * r, -0.05 * r))

    r1 = 1.0 - pinball(lip - fitted) / pinball(lip - np.quantile(lip, 0.95))
    assert steady.constants["l0l1_r1"] == pytest.approx(r1)
    assert 0.5 < r1 < 1.0
    worse = np.where(odd_blocks(200), 3.0 * lip, lip)
    out = verdict_from_metrics(frame(200, step__grad_norm=g, step__smooth_lip=worse))
    assert out.get("l0l1_smooth").fraction < 0.1


def test_l0l1_r1_is_one_for_an_exact_line_and_never_negative():
    g = np.linspace(0.0, 2.0, 40)
    exact = verdict_from_metrics(frame(40, step__grad_norm=g, step__smooth_lip=1.0 + 2.0 * g))
    assert exact.constants["l0l1_r1"] == pytest.approx(1.0, abs=1e-9)
    # A cloud with a few huge values, where a squared-error R² of the quantile line is
    # negative (-7.3 here): the pinball R¹ is 0, the line being no better than the constant.
    lip = np.r_[np.ones(36), [50.0, 60.0, 70.0, 80.0]]
    bad = verdict_from_metrics(frame(40, step__grad_norm=np.ones(40), step__smooth_lip=lip))
    a, b = quantile_regression_line(np.ones(40), lip, 0.95)
    r2 = 1.0 - np.sum((lip - a - b) ** 2) / np.sum((lip - lip.mean()) ** 2)
    assert r2 < 0.0  # what the old constant reported
    assert bad.constants["l0l1_r1"] == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)  # and on random clouds: always in [0, 1]
    for _ in range(20):
        g = rng.uniform(0, 3, 60)
        lip = rng.lognormal(0.0, 1.0, 60) * (1 + rng.uniform() * g)
        r1 = verdict_from_metrics(frame(60, step__grad_norm=g, step__smooth_lip=lip))
        assert -1e-9 <= r1.constants["l0l1_r1"] <= 1.0


# --------------------------------------------------------------------------- constants


# --------------------------------------------------------------------------- missing data


def test_missing_and_all_nan_columns_leave_assumptions_out():
    nan = np.full(10, np.nan)
    df = frame(
        10,
        step__inst_gap=np.linspace(-1, 1, 10),
        step__inst_gap_old=nan,
        step__descent_bound_past=np.linspace(-1, 0, 10),  # loss_change absent
        noise__trace_cov=nan,
        noise__grad_sq_norm=np.ones(10),
        step__grad_norm=np.ones(10),  # smooth_lip absent
        train__loss=np.ones(10),
    )
    out = verdict_from_metrics(df)
    assert [a.id for a in out.assumptions] == ["inst_gap:valid:same_batch"]
    assert out.constants == {}
    assert out.probed == {"noise": 0}
    assert out.skipped == {}
    empty = verdict_from_metrics(pd.DataFrame({"step": [0.0, 1.0]}))
    assert empty.assumptions == [] and empty.constants == {} and empty.probed == {}


def test_skipped_and_probed_counts():
    nan = np.nan
    df = frame(
        6,
        step__loss_change=[-1, -1, nan, -1, -1, -1],
        step__skipped=[0, 0, 1, 1, 2, 2],
        ref__gap=[nan, -1, nan, -1, nan, -1],
        ref__skipped=[nan, 0, nan, 0, nan, 0],
        noise__trace_cov=[1, nan, nan, nan, nan, 2],
        noise__skipped=[0, nan, nan, nan, nan, 3],
        curv__lambda_max=[nan, nan, 5, nan, nan, nan],
    )
    out = verdict_from_metrics(df)
    assert out.skipped == {"step": 2, "ref": 0, "noise": 3}
    assert out.probed == {"step": 5, "ref": 3, "noise": 2, "curv": 1}
    assert all(isinstance(v, int) for v in [*out.skipped.values(), *out.probed.values()])


def test_assumptions_reported_in_registry_order():
    n = 20
    df = frame(
        n,
        noise__trace_cov=np.ones(n),
        noise__grad_sq_norm=np.ones(n),
        ref__gap=-np.ones(n),
        ref__excess=-np.ones(n),
        ref__lin=np.zeros(n),
        step__smooth_lip=np.ones(n),
        step__grad_norm=np.ones(n),
        step__descent_bound_past=-np.ones(n),
        step__loss_change=-1.5 * np.ones(n),
        step__lin_old=-2 * np.ones(n),
        step__lin_new=-np.ones(n),
        step__update_norm=np.ones(n),
        step__inst_gap_old=0.5 * np.ones(n),
        step__inst_gap=-0.5 * np.ones(n),
        step__curv_dir=np.ones(n),
        step__smooth_lip_P=np.ones(n),
        step__grad_norm_P=np.ones(n),
        step__update_norm_P=np.ones(n),
        step__descent_bound_past_P=-np.ones(n),
        curv__lambda_max=np.ones(n),
        curv__precond_lambda_max=np.ones(n),
    )
    out = verdict_from_metrics(df)
    expected = [v.id for v in all_variants() if v.get("scheme") != "fresh_batch"]
    assert [a.id for a in out.assumptions] == expected
    assert [a.assumption for a in out.headlines()] == list(ASSUMPTIONS)
    # consistent keys (D = -1.5, <g,Δ> = -2, smooth_lip = curv_dir = 1): all hold
    assert all(a.fraction == 1.0 for a in out.assumptions)


def test_invalid_quantile():
    with pytest.raises(ValueError):
        verdict_from_metrics(frame(3, noise__trace_cov=[1, 2, 3]), quantile=1.0)


# --------------------------------------------------------------------------- output


def sample_verdict() -> RunVerdict:
    rng = np.random.default_rng(4)
    n = 40
    g = rng.uniform(0, 2, n)
    return verdict_from_metrics(
        frame(
            n,
            step__inst_gap=rng.normal(-0.5, 1, n),
            step__inst_gap_old=rng.normal(0.5, 1, n),
            step__descent_bound_past=rng.normal(-1, 1, n),
            step__loss_change=rng.normal(-1, 1, n),
            step__grad_norm=g,
            step__smooth_lip=1 + g + rng.uniform(0, 1, n),
            step__skipped=np.arange(n) // 10,
            ref__gap=rng.normal(-0.2, 1, n),
            noise__trace_cov=rng.uniform(1, 2, n),
            noise__grad_sq_norm=g**2,
        )
    )


def test_to_dict_from_dict_round_trip():
    verdict = sample_verdict()
    nan = float("nan")
    verdict.assumptions.append(
        AssumptionVerdict("ref_gap", "ref_gap", "x", 0, 0, nan, nan, nan, "wilson_ess_geyer")
    )
    verdict.constants["gamma"] = float("nan")
    data = verdict.to_dict()
    text = json.dumps(data, allow_nan=False)  # JSON-ready: no NaN left
    assert data["assumptions"][-1]["fraction"] is None
    assert data["constants"]["gamma"] is None
    back = RunVerdict.from_dict(json.loads(text))
    assert back.to_dict() == data
    assert [a.assumption for a in back.assumptions] == [a.assumption for a in verdict.assumptions]
    assert back.assumptions[0] == verdict.assumptions[0]
    assert all(a == b for a, b in zip(back.assumptions[:-1], verdict.assumptions))
    assert math.isnan(back.constants["gamma"])
    assert back.skipped == verdict.skipped == {"step": 3}


def test_verdict_table_lists_everything():
    verdict = sample_verdict()
    table = verdict_table(verdict)
    assert {a.assumption for a in verdict.assumptions} == set(ASSUMPTIONS)
    header = table.splitlines()[0]
    fraction_end = header.index("fraction") + len("fraction")
    for a in verdict.assumptions:
        row = next(line for line in table.splitlines() if line.startswith(f"  {a.id} "))
        assert f"{a.held}/{a.checked}" in row
        assert row.index(f"{a.fraction:.3f}") + 5 == fraction_end  # aligned under the header
        assert f"[{a.ci_low:.3f}, {a.ci_high:.3f}]" in row
    for assumption in ASSUMPTIONS.values():
        assert f"\n{assumption.label}" in table
    for name in verdict.constants:
        assert name in table
    assert "step=3" in table and "wilson_ess_geyer" in table
    assert "no assumption" in verdict_table(RunVerdict())


def test_legacy_verdicts_json_reads_as_headline_entries():
    """verdicts.json written before variants existed: entries keyed by assumption only."""
    old = {
        "assumptions": [
            {
                "assumption": "inst_gap",
                "label": "convex along the step, from x_{t+1}",
                "held": 3,
                "checked": 4,
                "fraction": 0.75,
                "ci_low": 0.3,
                "ci_high": 0.95,
            }
        ],
        "constants": {"L_lip_max": 2.0},
    }
    back = RunVerdict.from_dict(old)
    (entry,) = back.assumptions
    assert (entry.id, entry.headline, entry.interval_method) == ("inst_gap", True, "wilson")
    assert back.get("inst_gap") is entry and back.undefined == {}


def test_read_metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "step,step/inst_gap,note,noise/trace_cov,empty\n2,-0.5,b,,\n0,0.25,a,1.5,\n1,,c,,\n"
    )
    df = read_metrics_csv(path)
    assert list(df["step"]) == [0, 1, 2]
    assert "note" not in df.columns
    assert all(pd.api.types.is_float_dtype(df[c]) for c in df.columns)
    np.testing.assert_array_equal(df["step/inst_gap"], [0.25, np.nan, -0.5])
    assert df["empty"].isna().all()
    v = verdict_from_metrics(df)
    assert (v.get("inst_gap").held, v.get("inst_gap").checked) == (1, 2)
    assert v.probed == {"noise": 1}
