"""correlations.csv: within optimizer, pre-declared constants, exact permutation p-values,
Holm's correction stated in the table, a plain sentence when the sweep is too small."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from optprobe.analysis.correlations import (
    COLUMNS,
    CONSTANTS,
    PERFORMANCE,
    correlation_note,
    correlations,
)
from optprobe.analysis.stats import holm


def runs_table(per_optimizer: int, seed: int = 0) -> pd.DataFrame:
    """Two optimizers; L0 is 100x larger for adamw and adamw reaches a 10x lower loss, but
    within each optimizer L0 and the loss are unrelated."""
    rng = np.random.default_rng(seed)
    rows = []
    for opt, scale, loss in (("sgdm", 1.0, 1.0), ("adamw", 100.0, 0.1)):
        for i in range(per_optimizer):
            rows.append(
                {"run_id": f"{opt}{i}", "setting": "cnn/mnist", "optimizer": opt,
                 "included": True, "const:L0": scale * rng.uniform(1, 2),
                 "final_train_loss": loss * rng.uniform(1, 2), "steps_to_target": np.nan,
                 "const:not_declared": rng.uniform()}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_pooling_optimizers_would_find_the_optimizer_in_disguise():
    runs = runs_table(6)
    pooled = stats.spearmanr(runs["const:L0"], runs["final_train_loss"])
    assert pooled.pvalue < 0.01  # what pooling both optimizers reports
    corr = correlations(runs)
    assert list(corr.columns) == list(COLUMNS)
    assert set(corr["optimizer"]) == {"sgdm", "adamw"}
    assert set(corr["constant"]) == {"L0"}  # only pre-declared constants
    assert not corr["significant"].any()
    for r in corr.itertuples():
        group = runs[runs["optimizer"] == r.optimizer]
        assert r.rho == pytest.approx(
            stats.spearmanr(group["const:L0"], group["final_train_loss"])[0]
        )
        assert r.pvalue_method == "exact" and r.n == 6
    assert (corr["correction"] == "holm").all() and (corr["tests"] == 2).all()


def test_holm_over_the_table_and_a_real_effect_passes():
    runs = runs_table(6)
    within = runs["optimizer"] == "sgdm"
    runs.loc[within, "const:L0"] = np.arange(6.0)
    runs.loc[within, "final_train_loss"] = 1.0 + 3.0 * np.arange(6.0)  # monotone in L0
    runs.loc[within, "steps_to_target"] = np.arange(6.0)[::-1]
    corr = correlations(runs)
    np.testing.assert_allclose(corr["pvalue_adjusted"], holm(corr["pvalue"]))
    sig = corr[corr["significant"]]
    assert len(sig) == 2 and set(sig["optimizer"]) == {"sgdm"}
    assert sig["pvalue"].tolist() == pytest.approx([2 / 720, 2 / 720])
    note = correlation_note(corr)
    assert "2 of 3 tests pass the correction" in note and "Holm" in note


def test_too_small_a_sweep_says_so():
    corr = correlations(runs_table(4))  # 2/4! = 0.083 can never pass
    assert len(corr) == 2
    note = correlation_note(corr)
    assert "too small for any correlation to pass" in note
    assert "0.0833" in note and "0.025 (= 0.05/2)" in note
    assert "pass the correction:" not in note


def test_excluded_runs_never_enter_and_header_is_kept():
    runs = runs_table(6)
    runs.loc[0, ["included", "const:L0", "final_train_loss"]] = [False, 1e9, 1e9]
    corr = correlations(runs)
    assert corr.set_index("optimizer").loc["sgdm", "n"] == 5
    empty = correlations(runs.assign(included=False))
    assert empty.empty and list(empty.columns) == list(COLUMNS)
    assert "none computed" in correlation_note(empty)
    assert set(CONSTANTS) >= {"L0", "L1", "gamma", "sigma_sq"} and len(CONSTANTS) <= 8
    assert PERFORMANCE == ("final_train_loss", "steps_to_target")
    assert correlations(runs.assign(**{"const:L0": 1.0})).empty  # a constant: no ρ
