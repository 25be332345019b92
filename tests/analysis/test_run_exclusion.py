"""The analysis refuses bad runs (issue 12): every run gets a status in runs.csv; failed,
unfinished, truncated, non-finite, diverged and replay-mismatched runs are listed and enter
no comparison, finding or correlation; a finding without enough runs says so."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from job_folders import metrics, read_json, write_job, write_sweep

from optprobe.analysis.metrics_file import file_problems
from optprobe.analysis.runs import load_local_runs
from optprobe.analysis.sweep import build_tables, findings
from optprobe.cli.analyze import main as analyze
from optprobe.run.folder import JobFolder


def labels_in(data: dict) -> set[str]:
    """Every label in findings.json (findings and their entries)."""
    out = set()
    for g in data["groups"]:
        for f in g["findings"].values():
            out.add(f["label"])
            out.update(e["label"] for e in f["entries"])
    return out


def statuses(tables) -> dict[str, tuple[bool, str]]:
    runs = tables.runs.set_index("run_id")
    return {rid: (bool(r.included), r.exclusion_reason) for rid, r in runs.iterrows()}


def test_a_sweep_whose_every_job_failed_supports_nothing(tmp_path, capsys):
    failed = {"error": "RuntimeError: CUDA out of memory"}
    write_job(tmp_path / "0", status="failed", summary=failed, steps=10)  # died mid-run
    write_job(tmp_path / "1", status="failed", summary=failed, optimizer="adamw")
    JobFolder(tmp_path / "1").metrics.unlink()  # died before logging anything
    hydra = tmp_path / "2" / ".hydra"  # died before writing its summary
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text(yaml.safe_dump({"seed": 2}))
    (hydra / "hydra.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "runtime": {"choices": {"optimizer": "sgdm", "model": "cnn", "data": "mnist"}}
                }
            }
        )
    )
    assert analyze([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    data = read_json(tmp_path / "report" / "findings.json")
    assert data["runs"] == {
        "total": 3,
        "included": 0,
        "excluded": [
            {"run_id": "0", "setting": "cnn/mnist", "optimizer": "sgdm", "exclusion_reason": "failed",
             "exclusion_detail": "status 'failed': RuntimeError: CUDA out of memory"},
            {"run_id": "1", "setting": "cnn/mnist", "optimizer": "adamw",
             "exclusion_reason": "failed; no metrics",
             "exclusion_detail": "status 'failed': RuntimeError: CUDA out of memory; no metrics.csv"},
            {"run_id": "2", "setting": "cnn/mnist", "optimizer": "sgdm",
             "exclusion_reason": "incomplete; no metrics",
             "exclusion_detail": "status 'missing'; no metrics.csv"},
        ],
    }  # fmt: skip
    assert labels_in(data) == {"insufficient runs"}
    finding_lines = [line for line in out.splitlines() if line.startswith("Finding")]
    assert len(finding_lines) == 4
    assert all(": insufficient runs (0 included run(s)" in line for line in finding_lines)
    assert "supported" not in out.replace("not supported", "")
    comp = pd.read_csv(tmp_path / "report" / "comparison.csv")
    assert (comp["runs"] == 0).all() and (comp["label"] == "insufficient runs").all()
    html = (tmp_path / "report" / "report.html").read_text()
    assert "CUDA out of memory" in html and 'id="excluded"' in html


def test_diverged_runs_are_not_pooled_with_healthy_ones(tmp_path):
    write_sweep(tmp_path, optimizers=("sgd",), seeds=(0, 1, 2), descent_held=0.3)
    nan_run = metrics(seed=3, descent_held=1.0, inst_gap_held=0.0)
    nan_run.loc[30:, "train/loss"] = np.nan  # lr 1e6: the loss became NaN ...
    write_job(
        tmp_path / "3", optimizer="sgd", seed=3, table=nan_run,
        status="stopped: non-finite loss", summary={"non_finite_loss": {"count": 1, "first_step": 30}},
    )  # fmt: skip
    nan_run.to_csv(JobFolder(tmp_path / "3").metrics, index=False, na_rep="nan")  # ... logged
    write_job(tmp_path / "4", optimizer="sgd", seed=4, final_loss=3.6e14, descent_held=1.0)
    tables = build_tables(load_local_runs(tmp_path))
    status = statuses(tables)
    assert status["3"] == (False, "non-finite")
    assert status["4"] == (False, "diverged")
    assert all(status[str(i)] == (True, "") for i in range(3))
    comp = tables.comparison.set_index("assumption")
    assert (
        comp.loc["descent_bound:path:same_batch", "runs"] == 3
        and comp.loc["descent_bound:path:same_batch", "runs_excluded"] == 2
    )
    assert comp.loc["descent_bound:path:same_batch", "pooled_checked"] == 3 * 40
    assert comp.loc["descent_bound:path:same_batch", "mean_run_fraction"] == pytest.approx(0.3)
    entry = tables.findings["groups"][0]["findings"]["1"]["entries"][0]
    assert entry["run_fractions"] == [0.3, 0.3, 0.3]
    assert "Excluded runs: 2 of 5" in findings(tables)[-1]


def test_only_the_loss_column_decides_non_finite(tmp_path):
    table = metrics()
    table["step/inst_gap"] = table["step/inst_gap"].astype(object)
    table.loc[3, "step/inst_gap"] = "inf"  # a probe value, not the loss: not a reason
    path = tmp_path / "metrics.csv"
    table.to_csv(path, index=False)
    assert file_problems(path) == []
    table.loc[5, "train/loss"] = np.inf
    table.to_csv(path, index=False)
    assert file_problems(path) == [("non-finite", "train/loss is non-finite at 1 step(s), first 5")]


def test_truncated_metrics_are_flagged_not_used(tmp_path):
    write_sweep(tmp_path, optimizers=("sgdm",), seeds=(0, 1, 2))
    text = JobFolder(tmp_path / "0").metrics.read_text()
    JobFolder(tmp_path / "0").metrics.write_text(text[: len(text) // 2])  # cut inside a row
    lines = JobFolder(tmp_path / "1").metrics.read_text().splitlines(keepends=True)
    JobFolder(tmp_path / "1").metrics.write_text("".join(lines[:21]))  # cut between rows
    tables = build_tables(load_local_runs(tmp_path))
    runs = tables.runs.set_index("run_id")
    assert runs.loc["0", "exclusion_reason"] == "truncated"
    assert "ends inside a row" in runs.loc["0", "exclusion_detail"]
    assert runs.loc["1", "exclusion_reason"] == "truncated"
    assert runs.loc["1", "exclusion_detail"] == "metrics end at step 19; the run reached 40"
    assert runs.loc["2", "included"]
    assert tables.comparison["runs"].max() == 1
    assert set(tables.findings["groups"][0]["findings"]["1"]["entries"][0]["run_fractions"]) == {
        0.3
    }


def test_wrong_field_count_is_truncation(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,train/loss,step/inst_gap\n0,1.0,-1\n1,0.9\n2,0.8,-1\n")
    assert file_problems(path) == [
        ("truncated", "metrics.csv line 3 has the wrong number of fields")
    ]
    path.write_text("")
    assert file_problems(path) == [("no metrics", "metrics.csv is empty")]


def test_unfinished_and_replay_mismatched_runs(tmp_path):
    write_sweep(tmp_path, optimizers=("sgdm",), seeds=(0, 1, 2, 3, 4))
    JobFolder(tmp_path / "0").write_summary({"status": "running", "global_step": 40})
    JobFolder(tmp_path / "1").write_summary({"status": "preempted at step 17", "global_step": 40})
    replay = {"reference": {"replay": {"final_rel_dist": 0.31, "matches": False}}}
    JobFolder(tmp_path / "2").write_summary(
        {"status": "completed", "global_step": 40, "probes": replay}
    )
    JobFolder(tmp_path / "3").summary.write_text('{"status": "compl')  # damaged summary.json
    status = statuses(build_tables(load_local_runs(tmp_path)))
    assert status == {
        "0": (False, "incomplete"),
        "1": (False, "incomplete"),
        "2": (False, "replay mismatch"),
        "3": (False, "incomplete"),
        "4": (True, ""),
    }


def test_a_run_resumed_with_other_probes_is_left_out(tmp_path):
    """Its verdicts cover only the steps its probes ran on (``coverage`` in the summary)."""
    write_sweep(tmp_path, optimizers=("sgdm",), seeds=(0, 1))
    summary = read_json(JobFolder(tmp_path / "1").summary)
    segments = [{"first_step": 0, "probes": ["step"]}, {"first_step": 20, "probes": []}]
    summary["verdicts"] = {"coverage": {"steps": 40, "segments": segments, "note": "..."}}
    JobFolder(tmp_path / "1").write_summary(summary)
    tables = build_tables(load_local_runs(tmp_path))
    assert statuses(tables) == {"0": (True, ""), "1": (False, "probes changed")}
    detail = tables.runs.set_index("run_id").loc["1", "exclusion_detail"]
    assert "step from step 0; no probes from step 20" in detail


def test_a_finding_with_too_few_included_runs_says_so(tmp_path):
    write_sweep(tmp_path, optimizers=("sgdm",), seeds=(0, 1, 2))
    JobFolder(tmp_path / "2").write_summary({"status": "failed", "error": "x"})
    tables = build_tables(load_local_runs(tmp_path))
    f = tables.findings["groups"][0]["findings"]["2"]
    assert f["label"] == "insufficient runs"
    assert f["reason"] == "2 included run(s) of 3; at least 3 needed"
    assert any("insufficient runs (2 included run(s) of 3" in line for line in findings(tables))
    # with the minimum lowered the same runs are judged
    lowered = build_tables(load_local_runs(tmp_path), min_runs=2)
    assert lowered.findings["groups"][0]["findings"]["2"]["label"] == "supported"
    runs_csv = tables.runs
    assert {"included", "exclusion_reason", "exclusion_detail"} <= set(runs_csv.columns)
    json.dumps(tables.findings, allow_nan=False)  # JSON-ready, no NaN


def test_divergence_from_the_first_step_is_caught(tmp_path):
    """What lr 1e6 does to logistic regression: 2.4 at the start, 1e6 from the next step on
    (a median over the first steps would call 1e6 the initial loss)."""
    table = metrics(steps=8)
    table["train/loss"] = [2.4, 1.5e6, 2.1e6, 1.7e6, 3.3e6, 5.0e6, 7.1e6, 6.2e6]
    write_job(tmp_path / "0", table=table)
    (row,) = build_tables(load_local_runs(tmp_path)).runs.itertuples()
    assert (row.included, row.exclusion_reason, row.initial_train_loss) == (False, "diverged", 2.4)
