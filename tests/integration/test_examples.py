"""The examples of examples/ run as a user runs them (``python examples/<name>.py --out DIR
--steps N`` in a subprocess) and leave what their docstrings promise: a job folder per run
(metrics.csv with the probes' keys, summary.json with the first step's loss check,
verdicts.json with the step probe's verdicts) and the analysis's report over the runs.

Each example runs once per module (a fixture, about 10 s on 2 CPU cores with --steps 10); the
tests read its outputs. Not marked slow: no test takes more than about 10 s."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT

from optprobe.assumptions import variants_logged_under

EXAMPLES = ROOT / "examples"
STEPS = 10  # the curvature and noise probes (every 5 steps) fire on steps 0 and 5
PROBES = ("step", "curvature", "noise")  # in the order the examples give them: step first


@dataclass(frozen=True)
class Example:
    script: str
    job_folders: tuple[str, ...]  # relative to --out


EXAMPLE_RUNS = {
    "lightning_module": Example(
        "lightning_module.py", ("adamw/version_0/optprobe", "sgd/version_0/optprobe")
    ),
    "nanogpt_loop": Example("nanogpt_loop.py", ("gpt",)),
}


def run_example(script: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--out", str(out), *args],
        cwd=out.parent,  # nothing may land in the repository
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class ExampleRun:
    example: Example
    out: Path
    proc: subprocess.CompletedProcess

    def check_exit(self) -> None:
        assert self.proc.returncode == 0, self.proc.stderr[-4000:]

    def job(self, relative: str) -> Path:
        self.check_exit()
        return self.out / relative


@pytest.fixture(scope="module", params=sorted(EXAMPLE_RUNS))
def example_run(request, tmp_path_factory) -> ExampleRun:
    example = EXAMPLE_RUNS[request.param]
    out = tmp_path_factory.mktemp(request.param) / "out"
    proc = run_example(example.script, out, "--steps", str(STEPS))
    return ExampleRun(example, out, proc)


def test_example_exits_zero(example_run):
    example_run.check_exit()
    assert "report:" in example_run.proc.stdout + example_run.proc.stderr


def test_job_folders_are_the_runs_of_the_example(example_run):
    example_run.check_exit()
    found = sorted(
        str(p.parent.relative_to(example_run.out)) for p in example_run.out.rglob("summary.json")
    )
    assert found == sorted(example_run.example.job_folders)
    for relative in found:
        job = example_run.out / relative
        for name in ("metrics.csv", "config.yaml", "summary.json", "verdicts.json"):
            assert (job / name).is_file(), f"{relative}/{name} missing"


def test_summary_is_completed_with_an_equal_loss_check(example_run):
    for relative in example_run.example.job_folders:
        summary = json.loads((example_run.job(relative) / "summary.json").read_text())
        assert summary["status"] == "completed", summary.get("error")
        assert summary["global_step"] == STEPS
        assert set(summary["probes"]) == set(PROBES)
        check = summary["probes"][PROBES[0]]["loss_check"]
        assert check["status"] == "equal", check
        assert check["step"] == 0
        assert math.isfinite(check["training_loss"])
        assert abs(check["probe_loss"] - check["training_loss"]) <= 1e-4 * abs(
            check["training_loss"]
        )
        for other in PROBES[1:]:  # the first probe of the trainer checks, once
            assert "loss_check" not in summary["probes"][other]
        assert summary["probes"]["step"]["probed"] == STEPS


def test_verdicts_judge_the_step_probe(example_run):
    step_ids = {v.id for v in variants_logged_under("step")}
    for relative in example_run.example.job_folders:
        verdicts = json.loads((example_run.job(relative) / "verdicts.json").read_text())
        judged = {a["id"]: a for a in verdicts["assumptions"] if a["checked"] > 0}
        step_judged = step_ids & set(judged)
        for headline in ("inst_gap:valid:same_batch", "descent_bound:path:same_batch"):
            assert headline in step_judged, sorted(judged)
        assert judged["inst_gap:valid:same_batch"]["checked"] == STEPS
        assert verdicts["probed"]["step"] == STEPS
        assert verdicts["probed"]["curv"] == verdicts["probed"]["noise"] == 2  # steps 0 and 5


def test_metrics_hold_the_loss_and_every_probe(example_run):
    for relative in example_run.example.job_folders:
        metrics = pd.read_csv(example_run.job(relative) / "metrics.csv")
        columns = set(metrics.columns)
        assert {"step", "train/loss", "curv/lambda_max"} <= columns
        assert any(c.startswith("step/") for c in columns)
        assert any(c.startswith("noise/") for c in columns)
        assert metrics["train/loss"].notna().sum() == STEPS
        assert metrics["step/inst_gap"].notna().sum() == STEPS
        assert metrics["curv/lambda_max"].notna().sum() == 2
        assert metrics["noise/trace_cov"].notna().sum() == 2
        assert (metrics["curv/lambda_max"].dropna() > 0).all()


def test_report_lists_the_runs(example_run):
    report = example_run.job("report")
    assert (report / "report.html").is_file()
    verdicts = pd.read_csv(report / "verdicts.csv")
    assert set(verdicts["run_id"]) == set(example_run.example.job_folders)
    assert "inst_gap:valid:same_batch" in set(verdicts["id"])
    runs = pd.read_csv(report / "runs.csv")
    assert set(runs["run_id"]) == set(example_run.example.job_folders)
    assert runs["included"].astype(bool).all()


def test_lightning_penalty_missing_from_the_probes_loss_stops_the_fit(tmp_path):
    out = tmp_path / "out"
    proc = run_example("lightning_module.py", out, "--steps", "3", "--penalty", "0.01")
    assert proc.returncode != 0
    assert "TrainingLossMismatch" in proc.stderr, proc.stderr[-4000:]
    summaries = sorted(out.rglob("summary.json"))
    assert [p.parent.relative_to(out) for p in summaries] == [Path("sgd/version_0/optprobe")]
    job = summaries[0].parent
    summary = json.loads(summaries[0].read_text())
    assert summary["status"] == "failed"
    assert "TrainingLossMismatch" in summary["error"]
    assert summary["global_step"] == 0
    assert (job / "metrics.csv").is_file()  # kept (nothing was logged before step 0's check)
    assert (job / "config.yaml").is_file()
    assert not (job / "verdicts.json").exists()  # a failed run gets no verdicts
    assert not (out / "report").exists()  # the script stopped before the analysis
