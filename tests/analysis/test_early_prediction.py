"""Constants measured early in a run, and whether they predict the final loss."""

from __future__ import annotations

from html import escape

import numpy as np
import pandas as pd
import pytest
from frames import frame
from job_folders import metrics, write_sweep
from scipy import stats

from optprobe.analysis.correlations import ALPHA, COLUMNS, CONSTANTS
from optprobe.analysis.early import (
    EARLY_PREFIX,
    early_constants,
    early_prediction,
    early_rows,
    prediction_sentences,
)
from optprobe.analysis.report import write_report
from optprobe.analysis.run_constants import X_STAR_CONSTANTS, run_constants
from optprobe.analysis.runs import load_local_runs
from optprobe.analysis.sweep import build_tables
from optprobe.cli.analyze import main as analyze


def _history(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Probe keys whose scale drifts over the run (so early and full constants differ), rows
    shuffled and the first step 5 (a resumed log)."""
    rng = np.random.default_rng(seed)
    drift = np.linspace(1.0, 8.0, n)
    g = rng.uniform(0.5, 2.0, n) * drift
    unbiased = rng.normal(1.0, 1.0, n)
    unbiased[::2] = np.nan
    lam = np.full(n, np.nan)
    lam[::7] = rng.uniform(1, 9, lam[::7].size) * drift[::7]
    df = frame(
        n,
        step__smooth_lip=(1.0 + rng.lognormal(size=n)) * drift,
        step__grad_norm=g,
        step__inst_gap_old=rng.normal(size=n),
        step__update_norm=rng.uniform(0.5, 2.0, n),
        ref__excess=rng.uniform(-0.1, 2.0, n),
        ref__lin=rng.uniform(0.2, 3.0, n),
        ref__gap=rng.normal(size=n),
        ref__dist=rng.uniform(0.5, 2, n),
        noise__grad_sq_norm=g**2,
        noise__grad_sq_norm_unbiased=unbiased,
        noise__trace_cov=rng.uniform(1, 3, n) * drift,
        curv__lambda_max=lam,
    )
    df["step"] += 5
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5])
def test_early_constants_are_the_constants_of_the_truncated_run(fraction):
    history = _history()
    last = history["step"].max()
    keep = [i for i in range(len(history)) if history["step"][i] <= fraction * last]
    truncated = history.iloc[keep].sort_values("step").reset_index(drop=True)
    early = early_constants(history, 0.95, fraction)
    truncated_constants = run_constants(truncated, 0.95)
    # the x* constants exist on the truncated rows but are not early measurements
    assert {"gamma", "rho", "pl"} <= set(truncated_constants)
    assert not set(X_STAR_CONSTANTS) & set(early)
    kept = {k: v for k, v in truncated_constants.items() if k not in X_STAR_CONSTANTS}
    assert early == pytest.approx(kept, nan_ok=True)
    lip = truncated["step/smooth_lip"].to_numpy()
    assert early["L_lip_max"] == pytest.approx(lip.max())
    assert early["sigma_sq"] == pytest.approx(np.quantile(truncated["noise/trace_cov"], 0.95))
    full = run_constants(history.sort_values("step").reset_index(drop=True), 0.95)
    assert early["L_lip_max"] < full["L_lip_max"]  # the drift: the early window is not the run
    assert set(early) == set(full) - set(X_STAR_CONSTANTS)


def test_early_rows_refuses_a_bad_fraction_and_keeps_empty_tables_empty():
    with pytest.raises(ValueError, match="early fraction"):
        early_rows(_history(), 0.0)
    assert early_rows(pd.DataFrame(), 0.1).empty
    assert early_constants(pd.DataFrame({"step": []}), 0.95) == {}


def _runs(n: int, seed: int = 0, link: str = "L1") -> pd.DataFrame:
    """``n`` included runs per optimizer; AdamW's final loss rises with its early ``link``
    constant (plus a little noise), SGDM's is unrelated to every constant."""
    rng = np.random.default_rng(seed)
    rows = []
    for opt in ("adamw", "sgdm"):
        for i in range(n):
            row = {"setting": "mlp/digits", "optimizer": opt, "included": True, "seed": i}
            row.update({f"{EARLY_PREFIX}{c}": float(rng.lognormal()) for c in CONSTANTS})
            related = opt == "adamw"
            base = row[f"{EARLY_PREFIX}{link}"] if related else rng.lognormal()
            row["final_train_loss"] = base + 0.01 * rng.normal()
            rows.append(row)
    rows[0]["included"] = False  # excluded runs enter no correlation
    rows[0]["final_train_loss"] = -100.0
    return pd.DataFrame(rows)


def test_early_prediction_matches_scipy_spearman_and_holm():
    runs = _runs(12)
    table = early_prediction(runs)
    assert len(table) == 2 * len(CONSTANTS)
    used = runs[runs["included"]]
    for r in table.itertuples():
        group = used[used["optimizer"] == r.optimizer]
        expect = stats.spearmanr(group[f"{EARLY_PREFIX}{r.constant}"], group["final_train_loss"])
        assert r.rho == pytest.approx(expect.statistic, abs=1e-12)
        assert r.n == len(group) and r.performance == "final_train_loss"
    m = len(table)
    order = np.argsort(table["pvalue"].to_numpy())
    holm = np.maximum.accumulate(
        np.minimum(1, (m - np.arange(m)) * table["pvalue"].to_numpy()[order])
    )
    assert table["pvalue_adjusted"].to_numpy()[order] == pytest.approx(holm)
    sig = table[table["significant"]]
    assert list(zip(sig["optimizer"], sig["constant"])) == [("adamw", "L1")]


def test_one_sentence_per_optimizer_names_the_predictor_or_says_none():
    runs = _runs(12)
    adamw, sgdm = prediction_sentences(runs, early_prediction(runs), fraction=0.1)
    assert adamw.startswith("AdamW (mlp/digits, first 10% of training): the early L1 (ρ = 1.00")
    assert "(n = 11)" in adamw
    assert sgdm.startswith("SGDM (mlp/digits, first 10% of training): no early constant")
    assert "(n = 12, smallest Holm-adjusted p = " in sgdm


def test_sentence_for_a_sweep_too_small_to_answer():
    runs = _runs(4)  # smallest exact p = 2/4! = 0.083 > α already before the correction
    table = early_prediction(runs)
    assert not table.empty and not table["significant"].any()
    sentences = prediction_sentences(runs, table)
    assert len(sentences) == 2
    for s in sentences:
        assert "too small to answer" in s and f"exceeds α = {ALPHA}" in s
    two = runs[runs["optimizer"] == "sgdm"].head(2)
    (few,) = prediction_sentences(two, early_prediction(two))
    assert "not answered: 2 included run(s)" in few


def test_sweep_tables_carry_early_constants(tmp_path):
    write_sweep(tmp_path, seeds=(0, 1, 2, 3), steps=60)
    tables = build_tables(load_local_runs(tmp_path), early_fraction=0.2)
    runs = tables.runs
    first = runs.iloc[0]
    expect = early_constants(metrics(steps=60, seed=int(first["seed"])), 0.95, 0.2)
    assert expect and {f"{EARLY_PREFIX}{k}" for k in expect} <= set(runs.columns)
    for k, v in expect.items():
        assert first[f"{EARLY_PREFIX}{k}"] == pytest.approx(v)
    assert len(tables.prediction_sentences) == 2
    assert "first 20% of training" in tables.prediction_sentences[0]
    assert set(tables.early_prediction["performance"]) <= {"final_train_loss"}


def test_report_writes_the_table_and_the_sentences(tmp_path):
    runs = _runs(12)
    table = early_prediction(runs)
    sentences = prediction_sentences(runs, table)
    path = write_report(tmp_path, runs, None, None, None, {}, early_prediction=table,
                        prediction_sentences=sentences)  # fmt: skip
    written = pd.read_csv(tmp_path / "early_prediction.csv")
    assert written[["optimizer", "constant", "rho"]].equals(table[["optimizer", "constant", "rho"]])
    html = path.read_text(encoding="utf-8")
    assert escape(sentences[0]) in html and escape(sentences[1]) in html


def test_analyze_cli_writes_early_prediction_with_its_fraction(tmp_path):
    write_sweep(tmp_path, seeds=(0, 1, 2), steps=40)
    assert analyze([str(tmp_path), "--early-fraction", "0.25"]) == 0
    table = pd.read_csv(tmp_path / "report" / "early_prediction.csv")
    assert table.columns.tolist() == list(COLUMNS)
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "SGDM (cnn/mnist, first 25% of training)" in summary
    with pytest.raises(SystemExit):
        analyze([str(tmp_path), "--early-fraction", "0"])
