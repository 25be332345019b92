"""Fitted forms against their nulls: a q-quantile fit covers about q of the checked steps by
construction, so the verdict must say when it does not beat its null baseline.

Positive controls (the form is informative): a smoothness ratio that grows with the gradient
norm, a noise level that switches regime between the fitting and the checking blocks.
Negative controls (it holds by construction): the ratio independent of the gradient norm, a
stationary noise level, and even a noise level that grows 20-fold along the run (the
interleaved blocks see both ends: one constant covers it about as often as the null).
Sign checks say they have no null.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from frames import frame

from optprobe.analysis.variant_checks import NO_NULL
from optprobe.analysis.verdicts import RunVerdict, verdict_from_metrics, verdict_table

N = 200


def headline(df, assumption: str):
    verdict = verdict_from_metrics(df, quantile=0.9)
    (entry,) = [a for a in verdict.assumptions if a.id.startswith(assumption) and a.headline]
    return verdict, entry


def l0l1_frame(linked: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = rng.uniform(0.1, 5.0, N)
    noise = rng.lognormal(0.0, 0.3, N)
    lip = (0.5 + 2.0 * g) * noise if linked else 5.0 * noise
    return frame(N, step__grad_norm=g, step__smooth_lip=lip)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l0l1_that_tracks_the_gradient_norm_is_informative(seed):
    _, entry = headline(l0l1_frame(linked=True, seed=seed), "l0l1_smooth")
    assert entry.informative is True


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l0l1_on_an_unrelated_gradient_norm_holds_but_is_uninformative(seed):
    _, entry = headline(l0l1_frame(linked=False, seed=seed), "l0l1_smooth")
    assert entry.fraction >= 0.75  # "held" on most steps ...
    assert entry.informative is False  # ... by construction: no better than its nulls


def test_stationary_noise_level_is_bounded_by_construction():
    rng = np.random.default_rng(0)
    _, entry = headline(frame(N, noise__trace_cov=rng.lognormal(0, 0.5, N)), "bounded_variance")
    assert entry.informative is False
    assert entry.null_fraction == pytest.approx(0.9, abs=0.05)


def test_a_smooth_drift_is_still_covered_as_often_as_the_null():
    rng = np.random.default_rng(0)
    drift = np.exp(np.linspace(0.0, 3.0, N))  # grows 20x over the run
    _, entry = headline(frame(N, noise__trace_cov=drift * rng.lognormal(0, 0.1, N)), "bounded")
    assert entry.informative is False


def test_a_noise_level_that_switches_regime_fails_beyond_the_null():
    rng = np.random.default_rng(0)
    block = (np.arange(N) * 10) // N  # the verdict's 10 interleaved blocks
    level = np.where(block % 2 == 1, 10.0, 1.0)  # high on the checking blocks
    _, entry = headline(frame(N, noise__trace_cov=level * rng.lognormal(0, 0.1, N)), "bounded")
    assert entry.informative is True
    assert entry.fraction < 0.1 < entry.null_fraction


def test_sign_checks_say_they_have_no_null_and_the_table_shows_the_nulls():
    rng = np.random.default_rng(0)
    df = l0l1_frame(linked=False)
    df["step/inst_gap_old"] = rng.normal(size=N)
    verdict, entry = headline(df, "inst_gap_old")
    assert entry.null_method == NO_NULL and entry.informative is None
    table = verdict_table(verdict)
    assert "UNINFORMATIVE" in table and "null of the fitted forms" in table
    again = RunVerdict.from_dict(verdict.to_dict())
    assert [a.informative for a in again.assumptions] == [
        a.informative for a in verdict.assumptions
    ]


def test_comparison_labels_an_entry_most_runs_do_not_beat_their_null_uninformative():
    from optprobe.analysis.comparison import UNINFORMATIVE, comparison
    from optprobe.analysis.verdict_keys import KEY_COLUMN

    runs = pd.DataFrame(
        {"run_id": ["a", "b", "c"], "setting": "s", "optimizer": "sgd", "included": True}
    )

    def verdicts(informative):
        return pd.DataFrame(
            {
                "run_id": ["a", "b", "c"],
                KEY_COLUMN: "l0l1_smooth:same_batch",
                "held": [90, 88, 91],
                "checked": [100, 100, 100],
                "fraction": [0.90, 0.88, 0.91],
                "informative": informative,
            }
        )

    by_construction = comparison(runs, verdicts([False, False, True]))
    assert by_construction["label"].tolist() == [UNINFORMATIVE]
    assert by_construction["runs_informative"].tolist() == [1]
    beaten = comparison(runs, verdicts([True, True, False]))
    assert beaten["label"].tolist() == ["supported"]
    no_null = comparison(runs, verdicts([None, None, None]))
    assert no_null["label"].tolist() == ["supported"]
