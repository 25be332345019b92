"""Real ``python train.py`` subprocesses: a sweep, --cfg job, W&B offline written and read back."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
from job_harness import run_train

from optprobe.analysis.wandb_offline import offline_run_dirs, read_wandb_run

pytestmark = pytest.mark.slow


def test_multirun_sweep_writes_two_job_folders_and_summary(tmp_path):
    out = run_train(["-m", "optimizer=adam,sgd", "debug=smoke"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweeps = list((tmp_path / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    losses = []
    for job in jobs:
        rows = list(csv.DictReader(open(job / "metrics.csv")))
        assert len(rows) >= 6
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed"
        losses.append(summary["metrics"]["train/loss"])
    assert losses[0] != losses[1]  # adam and sgd really differ
    table = list(csv.DictReader(open(sweeps[0] / "sweep_summary.csv")))
    assert [r["overrides"] for r in table] == [
        "optimizer=adam debug=smoke",
        "optimizer=sgd debug=smoke",
    ]
    assert "Sweep summary (2 jobs)" in out.stdout
    assert "optimizer=adam" in out.stdout and "optimizer=sgd" in out.stdout


def test_cfg_job_prints_composed_config(tmp_path):
    out = run_train(["--cfg", "job", "optimizer=adamw", "optimizer.lr=0.123"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "torch.optim.AdamW" in out.stdout and "lr: 0.123" in out.stdout
    assert "DigitsDataModule" in out.stdout


def test_failing_job_in_sweep_is_listed(tmp_path):
    out = run_train(["-m", "model=mlp,gpt", "debug=smoke"], tmp_path)
    assert out.returncode != 0
    sweep = next((tmp_path / "train" / "multiruns").iterdir())
    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    assert [r["status"] for r in rows] == ["completed", "failed"]
    assert "cannot read data" in rows[1]["error"]


def test_wandb_offline_without_credentials_round_trip(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    out = run_train(
        ["logger=wandb", "debug=smoke", "tags=[roundtrip]"],
        tmp_path,
        env_extra={"HOME": str(home)},
        timeout=300,
        without_wandb_env=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "logging offline" in out.stdout  # optprobe.log writes warnings to stdout
    runs = offline_run_dirs(tmp_path)
    assert len(runs) == 1 and runs[0].name.startswith("offline-run-")
    rec = read_wandb_run(runs[0])
    assert rec.name == "logger=wandb,debug=smoke,tags=[roundtrip]"
    steps = [h for h in rec.history if "train/loss" in h]
    assert len(steps) == 6
    assert rec.config["optimizer"]["_target_"] == "torch.optim.SGD"
    assert "${" not in json.dumps(rec.config)
    job = next((tmp_path / "train" / "runs").iterdir())
    local = [r for r in csv.DictReader(open(job / "metrics.csv")) if r["train/loss"]]
    assert [float(r["train/loss"]) for r in local] == pytest.approx(
        [h["train/loss"] for h in steps], rel=1e-6
    )


def test_submitit_local_launcher_runs_the_sweep(tmp_path):
    out = run_train(
        ["-m", "hydra/launcher=submitit_local", "optimizer=adam,sgd", "debug=smoke"], tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = next((tmp_path / "train" / "multiruns").iterdir())
    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert (sweep / ".submitit").is_dir()  # really went through submitit
    for job in ("0", "1"):
        assert (
            json.loads((sweep / job / "summary.json").read_text())["probes"]["step"]["probed"] == 6
        )


@pytest.mark.parametrize(
    "override,expected",
    [
        ("optimizer=bogus", "Available options in 'optimizer'"),
        ("probes=bogus", "Available options in 'probes'"),
        ("optimizer.bogus_key=1", "Could not override 'optimizer.bogus_key'"),
        ("probes=[step,hessian]", "Could not load 'probes/hessian'"),  # unknown probe name
        ("probes.curvatur.every_n_steps=5", "Key 'curvatur' is not in struct"),
    ],
)
def test_unknown_option_group_or_key_is_a_clear_error(tmp_path, override, expected):
    out = run_train([override, "debug=smoke"], tmp_path)
    assert out.returncode != 0
    assert expected in out.stderr
    assert not (tmp_path / "train").exists()  # failed before any job folder was made


def without_permission_override() -> tuple[str, ...]:
    """Command prefix under which root obeys file modes (drops CAP_DAC_OVERRIDE), as users do."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("root ignores file modes and setpriv (util-linux) is missing")
    caps = "-dac_override,-dac_read_search"
    return ("setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}")


@pytest.mark.parametrize("multirun", [False, True])
def test_unwritable_output_folder_stops_before_any_job(tmp_path, multirun):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "earlier_run.txt").write_text("kept")
    logs.chmod(0o555)
    try:
        args = ["-m", "optimizer=sgd,adam", "debug=smoke"] if multirun else ["debug=smoke"]
        out = run_train(args, logs, prefix=without_permission_override(), timeout=120)
    finally:
        logs.chmod(0o755)
    assert out.returncode == 1
    assert f"output folder {logs}/train" in out.stderr and "is not writable" in out.stderr
    assert "paths.log_dir=" in out.stderr  # names the fix
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in logs.iterdir()) == ["earlier_run.txt"]  # nothing lost or made
    assert (logs / "earlier_run.txt").read_text() == "kept"


def test_file_in_the_output_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    out = run_train(["debug=smoke"], blocker / "logs", timeout=120)
    assert out.returncode == 1
    assert "is not writable (Not a directory)" in out.stderr
    assert blocker.read_text() == "not a folder"
