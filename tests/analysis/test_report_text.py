"""The report's answer sentences and number formatting."""

from __future__ import annotations

import numpy as np
import pandas as pd

from optprobe.analysis.report_text import (
    answer_sentences,
    cell,
    correlation_sentence,
    pair_sentence,
    pct_interval,
)


def comparison_rows() -> pd.DataFrame:
    base = {"setting": "cnn/mnist", "optimizer": "sgdm", "runs": 5, "runs_excluded": 1}
    return pd.DataFrame(
        [
            {**base, "assumption": "descent_bound",
             "assumption_label": "L-smoothness predicts the progress", "mean_run_fraction": 0.29,
             "ci_low": 0.2, "ci_high": 0.38, "pooled_fraction": 0.31, "label": "not supported"},
            {**base, "assumption": "inst_gap", "assumption_label": "convex along the step",
             "mean_run_fraction": 0.94, "ci_low": np.nan, "ci_high": np.nan,
             "pooled_fraction": 0.95, "label": "insufficient runs", "runs": 1},
        ]
    )  # fmt: skip


def test_pair_sentence_says_run_level_and_pooled_apart():
    s = pair_sentence(comparison_rows())
    assert s.startswith("cnn/mnist, SGDM (1 run excluded): mean over runs of the fraction")
    assert "95% t interval over runs" in s
    assert "the progress: 29% [20%–38%] (not supported; pooled steps 31%, 5 runs)" in s
    # no interval below 2 runs, and the pooled fraction is never shown as one
    assert "convex along the step: 94% (insufficient runs; pooled steps 95%, 1 run)" in s
    assert "[31" not in s and "95%]" not in s


def test_correlation_sentence_too_small_and_significant():
    rows = pd.DataFrame(
        {"setting": "s", "optimizer": "sgdm", "constant": ["L0", "gamma"],
         "performance": "final_train_loss", "n": [5, 5], "rho": [1.0, -0.3],
         "pvalue": [2 / 120, 0.6], "pvalue_adjusted": [4 / 120, 0.6], "tests": 2,
         "significant": [True, False]}
    )  # fmt: skip
    s = correlation_sentence(rows)
    assert "L0 with final_train_loss (s sgdm: ρ = 1.00, n = 5, adjusted p = 0.0333)" in s
    assert s.count("pass the correction") == 1 and "1 of 2 tests" in s
    many = rows.assign(tests=14)  # 2/120 > 0.05/14: no test can pass
    s = correlation_sentence(many)
    assert "too small for any correlation to pass" in s and "0.0167" in s
    assert "No correlation" not in correlation_sentence(pd.DataFrame())
    assert "none computed" in correlation_sentence(pd.DataFrame())
    legacy = pd.DataFrame({"constant": ["L"], "rho": [0.5], "ci_low": [0.1], "ci_high": [0.9]})
    assert "rerun" in correlation_sentence(legacy)


def test_answer_sentences():
    sentences = answer_sentences(comparison_rows(), None)
    assert sentences[0] == pair_sentence(comparison_rows())
    assert "none computed" in sentences[1]
    assert answer_sentences(None, None)[0] == "No optimizer comparison was available."


def test_formatting():
    assert pct_interval(0.5, 0.25, np.nan) == "50%"
    assert pct_interval(None, 0.1, 0.2) == "n/a"
    assert [cell(v) for v in (None, np.nan, 3.0, 0.123456, True, "x")] == [
        "—", "—", "3", "0.1235", "True", "x",
    ]  # fmt: skip
