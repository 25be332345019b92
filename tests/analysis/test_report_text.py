"""The report's answer sentences and number formatting."""

from __future__ import annotations

import numpy as np
import pandas as pd

from optprobe.analysis.report_text import (
    answer_sentences,
    cell,
    correlation_sentence,
    optimizer_sentence,
    pct_interval,
)


def test_optimizer_sentence_format():
    row = {
        "optimizer": "sgdm",
        "n_runs": 3,
        "smoothness_predicts": 0.12,
        "smoothness_predicts_low": 0.08,
        "smoothness_predicts_high": 0.17,
        "convexity_holds": 0.91,
        "convexity_holds_low": 0.88,
        "convexity_holds_high": 0.94,
        "ref_convexity_holds": np.nan,
    }
    s = optimizer_sentence(row)
    assert s.startswith("SGDM (3 runs): L-smoothness predicted the progress on 12% [8–17%]")
    assert "convexity along the step held on 91% [88–94%]" in s
    assert "reference" not in s.split(".")[0]
    assert "clearly more often" in s
    assert optimizer_sentence({"optimizer": "lion"}) == "Lion: no assumption was measured."


def test_optimizer_sentence_contrast():
    row = {"optimizer": "adamw", "n_runs": 1}
    for col, (v, lo, hi) in {
        "smoothness_predicts": (0.5, 0.4, 0.6),
        "convexity_holds": (0.55, 0.45, 0.65),
        "convexity_old_holds": (0.2, np.nan, np.nan),
    }.items():
        row.update({col: v, f"{col}_low": lo, f"{col}_high": hi})
    s = optimizer_sentence(row)
    assert s.startswith("AdamW (1 run): ")
    assert "(seen from x_{t+1}) and on 20% (seen from x_t)" in s
    assert s.endswith("The two intervals overlap: no clear difference between the two analyses.")
    row.update(smoothness_predicts=0.9, smoothness_predicts_low=0.8, smoothness_predicts_high=0.95)
    assert "unlike the reference study" in optimizer_sentence(row)
    del row["convexity_holds_low"]  # no interval: no contrast
    assert "interval" not in optimizer_sentence(row).split(".", 1)[1]


def test_correlation_sentence():
    none = pd.DataFrame(
        {"constant": ["L", "gamma"], "performance": ["final_train_loss"] * 2, "n": [6, 6],
         "rho": [0.4, -0.1], "ci_low": [-0.3, -0.8], "ci_high": [0.9, 0.6], "pvalue": [0.4, 0.8]}
    )  # fmt: skip
    s = correlation_sentence(none)
    assert s.startswith("None of the 2 Spearman correlations") and "excludes 0" in s
    assert "L with final training loss (ρ = 0.40" in s
    assert s.endswith("With at most 6 runs per correlation the intervals are rough.")
    some = none.assign(ci_low=[0.1, -0.8])
    s = correlation_sentence(some)
    assert s.startswith("1 of 2 Spearman correlations") and "L with final training loss" in s
    assert "No correlation" in correlation_sentence(pd.DataFrame())


def test_answer_sentences_without_comparison():
    sentences = answer_sentences(None, None)
    assert sentences == [
        "No optimizer comparison was available.",
        "No correlation between a fitted constant and performance was computed.",
    ]


def test_formatting():
    assert pct_interval(0.5, 0.25, np.nan) == "50%"
    assert pct_interval(None, 0.1, 0.2) == "n/a"
    assert [cell(v) for v in (None, np.nan, 3.0, 0.123456, True, "x")] == [
        "—", "—", "3", "0.1235", "True", "x",
    ]  # fmt: skip
