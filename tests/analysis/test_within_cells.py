"""The within-cell (stratified) Spearman test: does a constant predict beyond the
hyperparameters? Checked against brute-force enumeration and scipy's per-cell ranks."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from optprobe.analysis import within_cells
from optprobe.analysis.correlations import CONSTANTS, correlation_note, correlations
from optprobe.analysis.early import (
    EARLY_PREFIX,
    X_STAR_NOTE,
    early_prediction,
    prediction_sentences,
)
from optprobe.analysis.within_cells import smallest_within_pvalue, within_cells_test


def _brute_force(x, y, keys):
    """ρ_within and its exact p by enumerating every combination of within-cell
    permutations, ranks from scipy."""
    cells = {}
    for i, k in enumerate(keys):
        cells.setdefault(k, []).append(i)
    cells = [np.array(v) for v in cells.values() if len(v) >= 2]
    rx = [stats.rankdata(x[c]) - stats.rankdata(x[c]).mean() for c in cells]
    ry = [stats.rankdata(y[c]) - stats.rankdata(y[c]).mean() for c in cells]
    norm = np.sqrt(sum(a @ a for a in rx) * sum(b @ b for b in ry))
    observed = sum(a @ b for a, b in zip(rx, ry))
    hits = total = 0
    per_cell = [list(itertools.permutations(range(len(c)))) for c in cells]
    for combo in itertools.product(*per_cell):
        s = sum(a @ b[list(p)] for a, b, p in zip(rx, ry, combo))
        hits += abs(s) >= abs(observed) - 1e-9 * norm
        total += 1
    return observed / norm, hits / total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_enumeration(seed):
    rng = np.random.default_rng(seed)
    keys = ["a"] * 4 + ["b"] * 3 + ["c"] * 3 + ["lonely"]
    x = rng.normal(size=len(keys))
    y = 0.7 * x + rng.normal(size=len(keys))
    x[2] = x[3]  # a tie inside a cell keeps its average rank
    result = within_cells_test(x, y, keys)
    rho, p = _brute_force(x, y, keys)
    assert result.method == "exact"
    assert result.rho == pytest.approx(rho, abs=1e-12)
    assert result.pvalue == pytest.approx(p, abs=1e-12)
    assert (result.cells, result.n) == (3, 10)  # the one-run cell carries no information


def test_one_cell_is_the_ordinary_spearman_test():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=7), rng.normal(size=7)
    result = within_cells_test(x, y, [0] * 7)
    assert result.rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    exact = stats.permutation_test(
        (x,), lambda a: stats.spearmanr(a, y).statistic, permutation_type="pairings",
        alternative="two-sided",
    )  # fmt: skip
    assert result.pvalue == pytest.approx(exact.pvalue, abs=1e-9)


def test_random_pairings_agree_with_the_exact_p(monkeypatch):
    rng = np.random.default_rng(4)
    keys = np.repeat(np.arange(3), 4)
    x = rng.normal(size=12)
    y = 0.4 * x + rng.normal(size=12)
    exact = within_cells_test(x, y, keys)
    monkeypatch.setattr(within_cells, "EXACT_MAX_PAIRINGS", 0)
    sampled = within_cells_test(x, y, keys, n_resamples=20000, seed=1)
    assert exact.method == "exact" and sampled.method.startswith("permutation (20000")
    se = np.sqrt(exact.pvalue * (1 - exact.pvalue) / 20000)
    assert abs(sampled.pvalue - exact.pvalue) < 5 * se + 1e-4
    assert sampled.rho == exact.rho


def test_a_constant_that_only_tracks_the_learning_rate_fails_within_cells():
    """Both sides rise with the cell (the learning rate); within cells they are independent.
    The pooled test finds a strong correlation, the within-cell test none."""
    rng = np.random.default_rng(5)
    lr = np.repeat([1.0, 3.0, 10.0, 30.0], 6)
    x = np.log(lr) + 0.05 * rng.normal(size=lr.size)
    y = -np.log(lr) + 0.05 * rng.normal(size=lr.size)
    pooled = stats.spearmanr(x, y).statistic
    within = within_cells_test(x, y, lr)
    assert pooled < -0.8
    assert abs(within.rho) < 0.5 and within.pvalue > 0.05
    y_linked = -np.log(lr) - 0.05 * x + 0.001 * rng.normal(size=lr.size)  # linked within cells
    linked = within_cells_test(x, y_linked, lr)
    assert linked.rho < -0.9 and linked.pvalue < 1e-3


def test_undefined_cases_are_nan_not_numbers():
    nothing = within_cells_test([1.0, 2.0, 3.0], [3.0, 1.0, 2.0], ["a", "b", "c"])
    assert np.isnan(nothing.rho) and np.isnan(nothing.pvalue) and nothing.cells == 0
    flat = within_cells_test([1.0, 1.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0], ["a", "a", "b", "b"])
    assert np.isnan(flat.rho) and (flat.cells, flat.n) == (2, 4)
    dropped = within_cells_test([1.0, np.nan, 2.0], [1.0, 2.0, np.inf], [0, 0, 0])
    assert np.isnan(dropped.rho) and dropped.cells == 0  # two non-finite pairs leave one run
    kept = within_cells_test([1.0, np.nan, 2.0, 3.0], [1.0, 2.0, np.inf, 4.0], [0, 0, 0, 0])
    assert (kept.rho, kept.pvalue, kept.n) == (1.0, 1.0, 2)  # two runs: both pairings tie
    with pytest.raises(ValueError, match="differ in length"):
        within_cells_test([1.0, 2.0], [1.0, 2.0], ["a"])


def test_smallest_p_is_reached_by_a_perfect_within_cell_ordering():
    keys = [0, 0, 0, 1, 1, 1]
    x = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    perfect = within_cells_test(x, -x, keys)
    assert perfect.rho == pytest.approx(-1.0)
    assert perfect.pvalue == pytest.approx(smallest_within_pvalue([3, 3]))
    assert smallest_within_pvalue([3, 3]) == pytest.approx(2 / 36)
    assert smallest_within_pvalue([4] * 6, n_resamples=20000) == pytest.approx(1 / 20001)
    assert np.isnan(smallest_within_pvalue([1, 1]))


def _lr_sweep(link_within: bool) -> pd.DataFrame:
    """AdamW runs over 3 learning rates × 2 weight decays × 4 seeds; every early constant and
    the final loss rise with the learning rate; with ``link_within`` the final loss also
    follows L1 among runs of one cell."""
    rng = np.random.default_rng(6)
    rows = []
    for lr, wd, seed in itertools.product((1e-3, 3e-3, 1e-2), (0.0, 0.1), range(4)):
        row = {"setting": "mlp/digits", "optimizer": "adamw", "included": True, "seed": seed}
        row.update(lr=lr, weight_decay=wd, scheduler="cosine")
        row.update({f"{EARLY_PREFIX}{c}": np.log(lr) + 0.1 * rng.normal() for c in CONSTANTS})
        within = 0.01 * row[f"{EARLY_PREFIX}L1"] if link_within else 0.01 * rng.normal()
        row["final_train_loss"] = -np.log(lr) + within
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("link_within", [False, True])
def test_the_answer_says_whether_a_constant_predicts_beyond_the_hyperparameters(link_within):
    runs = _lr_sweep(link_within)
    table = early_prediction(runs)
    assert table["significant"].all()  # pooled: every constant "predicts" through the lr
    assert (table["cells"] == 6).all() and (table["n_within"] == 24).all()
    assert table["significant_within"].tolist() == [
        link_within and c == "L1" for c in table["constant"]
    ]
    (sentence,) = prediction_sentences(runs, table)
    assert "Within hyperparameter cells (6 cells of runs that differ only in seed, n = 24)" in (
        sentence
    )
    if link_within:
        assert "the early L1 (ρ_within = 1.00" in sentence and "still predicts" in sentence
    else:
        assert "no early constant predicts the final loss beyond the hyperparameters" in sentence


def test_without_hyperparameter_columns_the_within_test_is_not_run():
    runs = _lr_sweep(link_within=True).drop(columns=["lr", "weight_decay", "scheduler"])
    table = early_prediction(runs)
    assert table["significant"].all() and table["pvalue_within"].isna().all()
    assert not table["significant_within"].any() and (table["cells"] == 0).all()
    (sentence,) = prediction_sentences(runs, table)
    assert sentence.endswith(
        "Within hyperparameter cells: not tested (the runs table has no lr, "
        "weight_decay or scheduler column, or no cell of runs sharing them "
        "holds two runs with both values)." + X_STAR_NOTE
    )


def test_correlation_note_answers_pooled_and_within_cells():
    table = correlations(_lr_sweep(link_within=True), prefix=EARLY_PREFIX)
    note = correlation_note(table)
    assert ": 7 of 7 tests pass the correction: " in note
    within = note.split("Within hyperparameter cells (runs that differ only in seed), ")[1]
    assert within.startswith("1 of 7 tests pass the correction: L1 with final_train_loss")
    assert "ρ_within = 1.00, n = 24, adjusted p = " in within
    no_cells = table.assign(pvalue_within=np.nan, significant_within=False)
    assert correlation_note(no_cells).endswith(
        "Within hyperparameter cells: not tested (no cell holds two runs)."
    )
