"""comparison.csv and findings.json: run-level means and t intervals computed by hand, labels
from the interval, the conjunction of a finding's entries, the registry deciding which
entries bear on which finding, and README's text generated from findings.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from job_folders import read_json, write_job, write_sweep

from optprobe.analysis.comparison import COLUMNS, comparison, interval_label
from optprobe.analysis.findings import FINDINGS, combine, findings_data, findings_markdown
from optprobe.analysis.runs import load_local_runs
from optprobe.analysis.sweep import build_tables
from optprobe.assumptions import ASSUMPTIONS, variant_by_id
from optprobe.cli.analyze import main as analyze

T_975_2 = 4.302652729749464  # Student t quantile 0.975, 2 degrees of freedom


def tables(runs_spec: dict[str, list[tuple[str, int, int]]], setting="cnn/mnist"):
    """runs and verdicts tables from {optimizer: [(key, held, checked), ...] per run}."""
    runs, verdicts = [], []
    for opt, per_run in runs_spec.items():
        for i, entries in enumerate(per_run):
            rid = f"{opt}-{i}"
            runs.append({"run_id": rid, "setting": setting, "optimizer": opt, "included": True})
            for key, held, checked in entries:
                verdicts.append(
                    {"run_id": rid, "assumption": key, "label": key, "held": held,
                     "checked": checked, "fraction": held / checked}
                )  # fmt: skip
    return pd.DataFrame(runs), pd.DataFrame(verdicts)


def test_comparison_is_the_mean_of_run_fractions_with_a_t_interval():
    # three runs of very different length: the pooled fraction weights the long run, the
    # run-level mean does not
    runs, verdicts = tables(
        {
            "sgdm": [
                [("descent_bound", 2, 10)],
                [("descent_bound", 30, 100)],
                [("descent_bound", 5, 10)],
            ]
        }
    )
    comp = comparison(runs, verdicts)
    assert list(comp.columns) == list(COLUMNS)
    row = comp.iloc[0]
    fractions = np.array([0.2, 0.3, 0.5])
    mean, s = fractions.mean(), fractions.std(ddof=1)
    half = T_975_2 * s / np.sqrt(3)
    assert row["mean_run_fraction"] == pytest.approx(mean)
    assert mean - half < 0  # clipped to [0, 1]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.0, mean + half))
    assert row["pooled_fraction"] == pytest.approx(37 / 120)
    assert (row["pooled_held"], row["pooled_checked"], row["runs"]) == (37, 120, 3)
    assert row["finding"] == "smoothness" and row["label"] == "inconclusive"


def test_labels_from_the_interval():
    assert interval_label(0.55, 0.9, 3) == "supported"
    assert interval_label(0.1, 0.45, 3) == "not supported"
    assert interval_label(0.1, 0.45, 3, above=False) == "supported"
    assert interval_label(0.4, 0.6, 3) == "inconclusive"
    assert interval_label(0.5, 0.9, 3) == "inconclusive"  # touching the threshold
    assert interval_label(0.6, 0.9, 2) == "insufficient runs"
    assert interval_label(0.6, 0.9, 2, min_runs=2) == "supported"
    assert interval_label(float("nan"), float("nan"), 5) == "insufficient runs"
    assert combine(["supported", "supported"]) == "supported"
    assert combine(["supported", "inconclusive"]) == "inconclusive"
    assert combine(["supported", "not supported", "insufficient runs"]) == "not supported"
    assert combine(["supported", "insufficient runs"]) == "insufficient runs"
    assert combine([]) == "not measured"


def test_findings_by_hand_with_convexity_towards_x_star():
    spec = {
        # smoothness fails clearly; convex along the step, but not towards x*
        "sgdm": [
            [("descent_bound", 2, 10), ("inst_gap", 9, 10), ("ref_gap", 3, 10)],
            [("descent_bound", 3, 10), ("inst_gap", 10, 10), ("ref_gap", 3, 10)],
            [("descent_bound", 2, 10), ("inst_gap", 9, 10), ("ref_gap", 4, 10)],
        ],
        # smoothness straddles 50%; every convexity identity holds
        "adamw": [
            [("descent_bound", 3, 10), ("inst_gap", 9, 10), ("ref_gap", 9, 10)],
            [("descent_bound", 9, 10), ("inst_gap", 10, 10), ("ref_gap", 8, 10)],
            [("descent_bound", 6, 10), ("inst_gap", 9, 10), ("ref_gap", 9, 10)],
        ],
    }
    runs, verdicts = tables(spec)
    data = findings_data(runs, comparison(runs, verdicts), verdicts)
    groups = {g["optimizer"]: g["findings"] for g in data["groups"]}
    assert groups["sgdm"]["1"]["label"] == "supported"
    assert groups["sgdm"]["2"]["label"] == "not supported"  # x* is part of finding 2
    ref = next(e for e in groups["sgdm"]["2"]["entries"] if e["assumption"] == "ref_gap")
    assert ref["label"] == "not supported" and ref["run_fractions"] == [0.3, 0.3, 0.4]
    assert groups["adamw"]["1"]["label"] == "inconclusive"
    assert groups["adamw"]["2"]["label"] == "supported"
    assert data["findings"][0]["labels"] == {"supported": 1, "inconclusive": 1}
    assert [f["claim"] for f in data["findings"]] == [f.claim for f in FINDINGS]
    json.dumps(data, allow_nan=False)


def test_the_registry_decides_which_entries_bear_on_which_finding():
    """Finding membership follows Assumption.finding; variant keys (``<id>:<axis values>``)
    inherit their base's finding; fitted forms and near-duplicates are reported but do not
    decide."""
    entries = [(a.id, 1, 10) for a in ASSUMPTIONS.values()]
    entries += [("descent_bound:path:fresh_batch", 1, 10), ("no_such_check", 1, 10)]
    runs, verdicts = tables({"sgdm": [entries] * 3})
    data = findings_data(runs, comparison(runs, verdicts), verdicts)
    for finding in data["findings"]:
        got = data["groups"][0]["findings"][str(finding["number"])]["entries"]
        expected = [a.id for a in ASSUMPTIONS.values() if a.finding == finding["key"]]
        if finding["key"] == "smoothness":
            expected.append("descent_bound:path:fresh_batch")
        assert [e["assumption"] for e in got] == expected
        for e in got:  # sign checks decide, except near-duplicates (inst_gap_old)
            base = ASSUMPTIONS[e["assumption"].split(":")[0]]
            assert e["deciding"] == (base.kind == "sign" and base.duplicates is None)
    label = comparison(runs, verdicts).set_index("assumption")["assumption_label"]
    assert label["descent_bound:path:fresh_batch"].startswith(ASSUMPTIONS["descent_bound"].label)


def test_sanity_check_role_for_the_convex_model(tmp_path):
    write_sweep(tmp_path / "cnn", optimizers=("sgdm",))
    for i in range(3):
        write_job(tmp_path / "logreg" / str(i), model="logreg", seed=i)
    data = build_tables(load_local_runs(tmp_path)).findings
    roles = {g["setting"]: g["role"] for g in data["groups"]}
    assert roles == {"cnn/mnist": "evidence", "logreg/mnist": "sanity check"}
    assert data["findings"][1]["pairs"] == 1


def test_readme_text_is_generated_from_findings_json(tmp_path, capsys):
    write_sweep(tmp_path, optimizers=("sgdm", "adamw"), seeds=(0, 1, 2, 3))
    write_job(tmp_path / "8", optimizer="adamw", seed=9, final_loss=3.6e14)
    assert analyze([str(tmp_path), "--readme"]) == 0
    report = tmp_path / "report"
    data = read_json(report / "findings.json")
    text = (report / "findings.md").read_text()
    assert text == findings_markdown(data, f"optprobe-analyze {tmp_path} --readme")
    assert "Runs: 9, of which 8 included." in text and "`8` (cnn/mnist adamw): diverged" in text
    assert "**Finding 1: smoothness analyses fail to predict the progress on most steps.**" in text
    headline = variant_by_id("descent_bound:path:same_batch").label
    assert f"| cnn/mnist | sgdm | 4/4 | **supported** | {headline} |" in text
    assert "| 30% [30%, 30%] | 30% (48/160) | supported |" in text
    assert "95% t interval over runs" in text
    # the text changes with the JSON, not with anything else
    data["groups"][0]["findings"]["1"]["label"] = "inconclusive"
    assert "**inconclusive**" in findings_markdown(data)
    comp = pd.read_csv(report / "comparison.csv")
    assert {"runs", "mean_run_fraction", "ci_low", "ci_high", "pooled_fraction", "label"} <= set(
        comp.columns
    )
    assert "findings.md" in capsys.readouterr().out


def test_finding_2_is_decided_on_the_informative_score_beside_the_valid_one():
    """inst_gap holds where it certifies nothing (⟨g⁺, Δ⟩ ≥ 0) as well as where it certifies a
    decrease: valid on 9 of 10 steps but informative on 2 of 10 is no support for convexity."""
    fractions = [(9, 2), (9, 1), (8, 2)]
    per_run = [
        [("inst_gap:valid:same_batch", v, 10), ("inst_gap:valid_informative:same_batch", i, 10)]
        for v, i in fractions
    ]
    runs, verdicts = tables({"sgdm": per_run})
    data = findings_data(runs, comparison(runs, verdicts), verdicts)
    finding = data["groups"][0]["findings"]["2"]
    deciding = {e["assumption"]: e["label"] for e in finding["entries"] if e["deciding"]}
    assert deciding == {
        "inst_gap:valid:same_batch": "supported",
        "inst_gap:valid_informative:same_batch": "not supported",
    }
    assert finding["label"] == "not supported"
