"""The assumptions registry: every record is complete, and each sign check's predicate agrees
with its inequality written out by hand, on scalars and on arrays alike."""

from __future__ import annotations

import numpy as np
import pytest

from optprobe.assumptions import ASSUMPTIONS, all_variants, of_family, variant_by_id


def test_every_record_is_complete_and_families_match_keys():
    for a in ASSUMPTIONS.values():
        assert a.label and a.condition and a.symbols
        assert a.kind in ("sign", "fitted")
        assert all(k.split("/")[0] == a.family for k in a.keys), a.id
        if a.kind == "sign":
            assert a.holds is not None and a.fit is None
        else:
            assert a.fit is not None and a.fit[1] in a.keys
            with pytest.raises(TypeError, match="fitted"):
                a.held({})
    assert {a.id for a in of_family("step", "sign")} == {
        "inst_gap",
        "inst_gap_old",
        "descent_bound",
    }


BY_HAND = {
    "inst_gap": lambda v, t: v["step/inst_gap"] <= t,
    "inst_gap_old": lambda v, t: v["step/inst_gap_old"] >= -t,
    "descent_bound": lambda v, t: v["step/loss_change"] - t <= v["step/descent_bound"] < 0,
    "ref_gap": lambda v, t: v["ref/gap"] <= t,
}


@pytest.mark.parametrize("assumption", sorted(BY_HAND))
def test_sign_predicates_match_the_inequalities_by_hand(assumption):
    a = ASSUMPTIONS[assumption]
    rng = np.random.default_rng(0)
    columns = {k: rng.normal(size=200) for k in a.keys}
    tol = np.abs(rng.normal(scale=0.3, size=200))
    expected = [
        BY_HAND[assumption]({k: c[i] for k, c in columns.items()}, tol[i]) for i in range(200)
    ]
    held = a.held({**columns, a.tolerance_key: tol})
    np.testing.assert_array_equal(held, expected)
    assert 0 < np.mean(expected) < 1  # both outcomes occur, so the comparison can fail
    for i in range(5):  # scalars, as a probe sees them online
        assert (
            bool(a.held({**{k: c[i] for k, c in columns.items()}, a.tolerance_key: tol[i]}))
            == expected[i]
        )


def test_variants_read_their_schemes_and_l_choices_keys():
    past = variant_by_id("descent_bound:past:fresh_batch")
    assert past.keys == ("step_fresh/descent_bound_past", "step_fresh/loss_change")
    assert past.tolerance_key == "step_fresh/float_tol"
    assert past.running_key == "step_fresh/frac_descent_bound_past_held"
    assert past.online and not variant_by_id("descent_bound:path:same_batch").online
    informative = variant_by_id("inst_gap:valid_informative:same_batch")
    assert informative.inputs == ("step/inst_gap", "step/lin_new")
    logged = {"step/inst_gap": -1.0, "step/lin_new": 0.5, "step/float_tol": 0.0}
    assert variant_by_id("inst_gap:valid:same_batch").judge_step(logged) is True
    assert informative.judge_step(logged) is False  # valid, but certifies no decrease
    # the descent bound is scored only on steps that made progress
    bound = variant_by_id("descent_bound:past:same_batch")
    assert bound.judge_step({"step/descent_bound_past": 1.0, "step/loss_change": 0.5}) is None
    assert bound.judge_step({"step/descent_bound_past": -1.0, "step/loss_change": -2}) is True
    assert bound.judge_step({"step/loss_change": -2}) is None  # not logged: not judged
    ref = variant_by_id("ref_gap")
    assert (ref.keys, ref.running_key, ref.headline) == (
        ("ref/gap",),
        "ref/frac_ref_gap_held",
        True,
    )
    assert sum(v.headline for v in all_variants()) == 11  # 4 step checks x 2 schemes + 3


@pytest.mark.parametrize("doc", ["README.md", "docs/metrics.md"])
def test_docs_carry_the_registry_table(doc):
    """README's and docs/metrics.md's assumption tables are the registry's, word for word."""
    from pathlib import Path

    from optprobe.assumptions import markdown_table, with_table

    text = (Path(__file__).resolve().parents[1] / doc).read_text()
    assert markdown_table() in text
    assert with_table(text) == text, f"regenerate with: python -m optprobe.assumptions {doc}"
    for a in ASSUMPTIONS.values():
        assert f"`{a.id}`" in text
