"""Every verdict exists per variant: the three L choices of the descent bound, valid vs valid
and informative convexity (per step and summed), and the two batch schemes side by side."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from frames import frame

from optprobe.analysis.verdicts import verdict_from_metrics
from optprobe.assumptions import (
    ASSUMPTIONS,
    SCHEMES,
    all_variants,
    finding_evidence,
    variant_by_id,
)


def step_frame(prefix: str = "step", curv_dir=None, lambda_max=None) -> pd.DataFrame:
    """Four probed steps with consistent keys: D, <g,Δ> (lin_old), ‖Δ‖ = 1, smooth_lip."""
    d = np.array([-1.0, -0.2, 0.3, -0.5])
    lin_old = np.array([-2.0, -1.0, -1.0, -0.6])
    lip = np.array([1.0, 4.0, 2.0, 0.5])
    cols = {
        "loss_change": d,
        "lin_old": lin_old,
        "inst_gap_old": d - lin_old,
        "update_norm": np.ones(4),
        "smooth_lip": lip,
        "descent_bound_past": [np.nan, -1.5, 1.0, 1.4],  # L_past = 1, 1, 4 (earlier steps)
    }
    if curv_dir is not None:
        cols["curv_dir"] = curv_dir
    df = frame(4, **{f"{prefix}__{k}": v for k, v in cols.items()})
    if lambda_max is not None:
        df["curv/lambda_max"] = lambda_max
    return df


def test_the_l_choices_side_by_side():
    out = verdict_from_metrics(step_frame(lambda_max=[np.nan, 6.0, np.nan, np.nan]))
    ids = [a.id for a in out.assumptions if a.assumption == "descent_bound"]
    # local needs curv_dir: smooth_eff's bound is D_t itself, so without curv_dir it is not judged
    assert ids == [f"descent_bound:{c}:same_batch" for c in ("path", "past", "hessian")]
    path, past, hessian = (out.get(i) for i in ids)
    # hessian: L = the max of λ_max alone = 6 (here also the path L), measured on one step
    assert "L = 6, the run's max of curv/lambda_max (1 steps); set at step 1" in hessian.note
    assert (hessian.held, hessian.checked) == (0, 3)
    without = verdict_from_metrics(step_frame())  # no curvature probe: no hessian L
    assert without.get("descent_bound:hessian:same_batch") is None
    # path: L = max(smooth_lip 4, λ_max 6) = 6: bounds -2+3, -1+3, ... all >= 0: none informative
    assert out.constants["L_path"] == 6.0 and "L = 6" in path.note
    assert (path.held, path.checked, path.no_progress) == (0, 3, 1)
    # past: bounds -1.5 (vs D -0.2: not valid), 1.4 (not < 0); the first step has no L_past
    assert (past.held, past.checked, past.no_progress) == (0, 2, 1)
    with_curv = verdict_from_metrics(step_frame(curv_dir=[1.0, 1.0, 1.0, 1.0]))
    local = with_curv.get("descent_bound:local:same_batch")
    assert local.note.startswith("L = curv_dir")
    # bounds -2+0.5 >= -1 ? no; -1+0.5 = -0.5 >= -0.2? no; -0.6+0.5 = -0.1 >= -0.5: held
    assert (local.held, local.checked) == (1, 3)
    assert path.headline and not past.headline and not local.headline


def test_local_l_judges_only_the_steps_with_curv_dir():
    """A step without curv_dir is not judged (never scored with smooth_eff's tautological
    bound, which would hold on every progress step)."""
    out = verdict_from_metrics(step_frame(curv_dir=[1.0, np.nan, np.nan, 1.0]))
    local = out.get("descent_bound:local:same_batch")
    # step 0: -2 + 0.5 = -1.5 >= D = -1? no; step 3: -0.6 + 0.5 = -0.1 >= -0.5: held
    assert (local.held, local.checked) == (1, 2)
    assert "on 2 steps" in local.note


def test_path_l_is_a_hindsight_max_so_the_online_l_is_smaller_early():
    """The online L of a step never includes the step itself; the path L is the max of all."""
    out = verdict_from_metrics(step_frame())
    path = out.get("descent_bound:path:same_batch")
    # L_path = 4 (step 1's smooth_lip): step 0's bound -2 + 2 = 0 is not < 0
    assert path.sum_rhs == pytest.approx(np.sum([-2, -1, -1, -0.6]) + 0.5 * 4 * 4)
    assert path.sum_lhs == pytest.approx(-1.4)
    assert path.sum_held is False  # Σ bound = 3.4 is no decrease


def test_convexity_valid_versus_informative_per_step_and_summed():
    """The identity held on every step, but summed it certifies no progress: Σ<g⁺,Δ> = +6.2
    against ΣD = −4.6 (the CNN/SGD-momentum case of the issue)."""
    d = np.array([-1.0, -1.2, -1.0, -1.4])
    lin_new = np.array([-0.5, 2.5, 2.0, 2.2])  # Σ = 6.2
    out = verdict_from_metrics(
        frame(4, step__loss_change=d, step__lin_new=lin_new, step__inst_gap=d - lin_new)
    )
    valid = out.get("inst_gap:valid:same_batch")
    informative = out.get("inst_gap:valid_informative:same_batch")
    assert (valid.held, valid.checked) == (4, 4)
    assert (informative.held, informative.checked) == (1, 4)
    assert (valid.sum_lhs, valid.sum_rhs) == pytest.approx((-4.6, 6.2))
    assert valid.sum_held is True and informative.sum_held is False
    assert informative.variant == {"score": "valid_informative", "scheme": "same_batch"}


def test_both_batch_schemes_are_judged_side_by_side():
    df = step_frame().merge(step_frame("step_fresh"), on="step")
    df["step_fresh/loss_change"] += 0.5  # a different quantity on the fresh batch
    out = verdict_from_metrics(df)
    same = out.get("descent_bound:path:same_batch")
    fresh = out.get("descent_bound:path:fresh_batch")
    assert same is not None and fresh is not None and fresh.headline
    assert fresh.variant == {"L": "path", "scheme": "fresh_batch"}
    assert (same.no_progress, fresh.no_progress) == (1, 3)
    assert out.constants["L_path"] == out.constants["L_path_fresh"] == 4.0
    assert out.probed == {"step": 4, "step_fresh": 4}


def test_ids_are_stable_and_documented():
    ids = [v.id for v in all_variants()]
    assert len(ids) == len(set(ids))
    assert "descent_bound:path:same_batch" in ids and "ref_gap" in ids
    for verdict_id in ids:
        variant = variant_by_id(verdict_id)
        assert variant.id == verdict_id
        base, *values = verdict_id.split(":")
        assert base == variant.assumption.id and values == list(variant.variant.values())
    assert set(SCHEMES) == {"same_batch", "fresh_batch"}
    # the two convexity-along-the-step checks are one piece of evidence, not two
    assert ASSUMPTIONS["inst_gap_old"].duplicates == "inst_gap"
    # finding 2 includes convexity towards x*; finding 1 both smoothness analyses
    assert [a.id for a in finding_evidence("convexity")] == ["inst_gap", "ref_gap"]
    assert [a.id for a in finding_evidence("smoothness")] == ["descent_bound", "l0l1_smooth"]


def test_descent_bound_in_the_optimizers_norm_beside_the_euclidean_one():
    # Euclidean path L = max smooth_lip = 4: bound = lin_old + 2 >= 0 on every step (0 of 3).
    # Optimizer's norm: ‖Δ‖_P = 1, L_P = max(max smooth_lip_P = 1.5, precond λ_max = 3) = 3:
    # bound = lin_old + 1.5 = (-0.5, 0.5, ·, 0.9) holds on step 0 only (D = -1 ≤ -0.5 < 0).
    df = step_frame()
    df["step/update_norm_P"] = 1.0
    df["step/smooth_lip_P"] = [1.0, 1.5, 0.5, 1.0]
    df["step/grad_norm_P"] = [1.0, 2.0, 3.0, 4.0]
    df["step/descent_bound_past_P"] = [np.nan, -0.1, -1.0, 0.1]
    df["curv/precond_lambda_max"] = 3.0
    out = verdict_from_metrics(df)
    euclid = out.get("descent_bound:path:same_batch")
    geom = out.get("descent_bound:path:optimizer:same_batch")
    assert (euclid.held, euclid.checked) == (0, 3)
    assert (geom.held, geom.checked) == (1, 3)
    assert geom.variant == {"L": "path", "geometry": "optimizer", "scheme": "same_batch"}
    assert euclid.headline and not geom.headline
    assert "L_P = 3" in geom.note
    past = out.get("descent_bound:past:optimizer:same_batch")
    assert (past.held, past.checked) == (1, 2)  # step 1: -0.2 ≤ -0.1 < 0; step 3: 0.1 ≥ 0
    assert out.get("l0l1_smooth:optimizer:same_batch") is not None
    assert "descent_bound:local:optimizer:same_batch" not in {v.id for v in all_variants()}


def test_no_optimizer_geometry_verdict_without_its_keys():
    out = verdict_from_metrics(step_frame(lambda_max=3.0))
    assert out.get("descent_bound:path:same_batch") is not None
    assert not [a.id for a in out.assumptions if "optimizer" in a.id]


def test_hessian_l_p_is_not_set_by_one_huge_dual_norm_ratio():
    """A coordinate whose preconditioner is still at ε makes smooth_lip_P huge on one step:
    the path L_P = 1000 then predicts no decrease anywhere, while L_P = λ_max(P⁻¹H) = 3 gives
    the bound of the optimizer-norm test above."""
    df = step_frame()
    df["step/update_norm_P"] = 1.0
    df["step/smooth_lip_P"] = [1.0, 1000.0, 0.5, 1.0]
    df["step/grad_norm_P"] = [1.0, 2.0, 3.0, 4.0]
    df["curv/precond_lambda_max"] = 3.0
    out = verdict_from_metrics(df)
    path = out.get("descent_bound:path:optimizer:same_batch")
    hessian = out.get("descent_bound:hessian:optimizer:same_batch")
    assert (path.held, path.checked) == (0, 3) and "set at step 1 by step/smooth_lip_P" in path.note
    assert (hessian.held, hessian.checked) == (1, 3)
    assert hessian.note.startswith("L_P = 3, the run's max of curv/precond_lambda_max (4 steps)")
    assert hessian.variant == {"L": "hessian", "geometry": "optimizer", "scheme": "same_batch"}
