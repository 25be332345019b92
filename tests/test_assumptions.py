"""The assumptions registry: every record is complete, and each sign check's predicate agrees
with its inequality written out by hand, on scalars and on arrays alike."""

from __future__ import annotations

import numpy as np
import pytest

from optprobe.assumptions import ASSUMPTIONS, of_family


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
