"""A real tiny sweep analysed end to end: local store vs W&B offline, the CLI, the notebook."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config
from job_folders import execute_notebook

from optprobe.analysis.correlations import COLUMNS as CORRELATION_COLUMNS
from optprobe.analysis.correlations import CONSTANTS
from optprobe.analysis.runs import load_local_runs, load_wandb_offline_runs
from optprobe.analysis.sweep import build_tables, findings
from optprobe.assumptions import variant_by_id
from optprobe.cli.analyze import main as analyze_main
from optprobe.run.job import train

pytestmark = pytest.mark.slow

JOBS = [(opt, seed) for opt in ("sgdm", "adamw") for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Six jobs (2 optimizers x 3 seeds) with step, reference and noise probes and W&B offline."""
    import wandb

    root = tmp_path_factory.mktemp("sweep")
    old = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"
    try:
        for i, (opt, seed) in enumerate(JOBS):
            cfg = compose_config(
                [
                    "debug=smoke",
                    "model=logreg",
                    f"optimizer={opt}",
                    f"seed={seed}",
                    "probes=[step,noise,reference]",
                    "probes.noise.every_n_steps=1",
                    "trainer.max_steps=12",
                    "logger=wandb",
                ],
                root / str(i),
            )
            cfg.paths.log_dir = str(root.parent / f"{root.name}_refs")
            train(cfg)
            wandb.finish()
    finally:
        if old is None:
            os.environ.pop("WANDB_MODE")
        else:
            os.environ["WANDB_MODE"] = old
    return root


def comparable(tables) -> pd.DataFrame:
    cols = [c for c in tables.runs.columns if c.startswith(("held:", "const:"))]
    cols += ["final_train_loss", "steps_to_target", "final_val_acc", "optimizer", "seed"]
    cols += ["included", "exclusion_reason"]
    return tables.runs.set_index("run_id")[cols].sort_index()


def test_job_verdicts_are_written(sweep):
    for i in range(len(JOBS)):
        verdict = json.loads((sweep / str(i) / "verdicts.json").read_text())
        ids = {a["assumption"] for a in verdict["assumptions"]}
        assert {"inst_gap", "inst_gap_old", "descent_bound", "ref_gap", "bounded_variance"} <= ids
        # logistic regression is convex: the convexity identities hold on every probed step
        fractions = {a["assumption"]: a["fraction"] for a in verdict["assumptions"]}
        assert fractions["inst_gap"] == fractions["ref_gap"] == 1.0


def test_local_store_and_wandb_offline_give_the_same_table(sweep):
    local = build_tables(load_local_runs(sweep))
    offline = build_tables(load_wandb_offline_runs(sweep))
    assert len(local.runs) == len(offline.runs) == len(JOBS)
    a, b = comparable(local), comparable(offline)
    assert list(a.index) == list(b.index) == [str(i) for i in range(len(JOBS))]
    assert set(a.columns) == set(b.columns)
    for col in a.columns:
        if a[col].dtype.kind in "fi":
            np.testing.assert_allclose(
                a[col].astype(float), b[col].astype(float), rtol=1e-6, equal_nan=True, err_msg=col
            )
        else:
            assert list(a[col]) == list(b[col]), col
    assert set(a["optimizer"]) == {"sgdm", "adamw"}
    pd.testing.assert_frame_equal(
        local.comparison.reset_index(drop=True),
        offline.comparison.reset_index(drop=True),
        rtol=1e-6,
    )


def test_resumed_job_keeps_one_wandb_run(tmp_path, monkeypatch):
    """Stop after 3 steps, resume in the same folder: two W&B starts of one run, read as one."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    job = tmp_path / "job"
    common = ["debug=smoke", "probes=[step]", "logger=wandb", "trainer.val_check_interval=null"]
    train(compose_config([*common, "trainer.max_steps=3"], job))
    wandb.finish()
    ckpt = job / "checkpoints" / "last.ckpt"
    train(compose_config([*common, "trainer.max_steps=4", f"ckpt_path={ckpt}"], job))
    wandb.finish()
    starts = sorted((job / "wandb").glob("offline-run-*"))
    assert len(starts) == 2
    logs = {p.name for start in starts for p in start.glob("run-*.wandb")}
    assert len(logs) == 1  # run-<id>.wandb: both starts log to one run id
    (offline,) = load_wandb_offline_runs(tmp_path)
    (local,) = load_local_runs(tmp_path)
    assert offline.extra["starts"] == 2
    assert list(offline.history["step"]) == list(local.history["step"]) == [0, 1, 2, 3]
    for key in ("train/loss", "step/inst_gap"):
        np.testing.assert_allclose(offline.history[key], local.history[key], rtol=1e-6)


def test_analyze_cli_writes_the_report(sweep, capsys):
    assert analyze_main([str(sweep), "--readme"]) == 0
    out = capsys.readouterr().out
    assert "collected 6 runs" in out and "runs: 6, included: 6, excluded: 0" in out
    report = sweep / "report"
    html = (report / "report.html").read_text()
    for run_id in map(str, range(len(JOBS))):
        assert f">{run_id}<" in html
    for name in ("runs.csv", "verdicts.csv", "correlations.csv", "comparison.csv"):
        assert (report / name).stat().st_size > 100, name
    for png in (
        "held_fractions.png",
        "trajectories.png",
        "constants_vs_performance.png",
        "optimizer_comparison.png",
    ):
        assert (report / png).stat().st_size > 10_000, png
    runs = pd.read_csv(report / "runs.csv")
    assert runs["included"].all() and runs["exclusion_reason"].isna().all()
    correlations = pd.read_csv(report / "correlations.csv")
    assert list(correlations.columns) == list(CORRELATION_COLUMNS)
    assert {"L_lip_max", "sigma_sq"} <= set(correlations["constant"]) <= set(CONSTANTS)
    assert set(correlations["n"]) == {3}  # within optimizer: 3 runs each, never 6
    assert "too small for any correlation to pass" in out
    # logistic regression is the convex sanity check: convexity holds on every step of every run
    data = json.loads((report / "findings.json").read_text())
    assert {g["role"] for g in data["groups"]} == {"sanity check"}
    for g in data["groups"]:
        assert g["runs_included"] == 3 and g["findings"]["2"]["label"] == "supported"
    lines = findings(build_tables(load_local_runs(sweep)))
    finding2 = [line for line in lines if line.startswith("Finding 2")]
    assert len(finding2) == 2 and all("[sanity check]: supported (" in x for x in finding2)
    summary = (report / "summary.md").read_text()
    label = variant_by_id("inst_gap:valid:same_batch").label
    assert f"| sgdm | {label} | 3 | 100% | [100%, 100%] | 100% | supported |" in summary
    assert "| sgdm | 3/3 | **supported** |" in (report / "findings.md").read_text()


def test_a_real_diverged_job_is_not_pooled(tmp_path):
    """lr 1e6 on logistic regression: the job "completes" with a training loss of ~1e6; the
    analysis lists it as diverged and uses only the healthy job."""
    for name, lr in (("0", 0.1), ("1", 1e6)):
        overrides = ["debug=smoke", "model=logreg", "optimizer=sgd", f"optimizer.lr={lr}"]
        train(compose_config([*overrides, "probes=[step]"], tmp_path / name))
    tables = build_tables(load_local_runs(tmp_path))
    runs = tables.runs.set_index("run_id")
    assert runs.loc["1", "status"] == "completed" and runs.loc["1", "final_train_loss"] > 1e4
    assert list(runs["exclusion_reason"]) == ["", "diverged"]
    assert set(tables.comparison["runs"]) == {1} and set(tables.comparison["runs_excluded"]) == {1}


def test_notebook_reproduces_the_report(sweep):
    text = execute_notebook(sweep)
    assert "6 runs, 6 included" in text and "[sanity check]" in text and "image/png" in text
    assert (sweep / "report" / "report.html").is_file()
