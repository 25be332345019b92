"""SIGTERM, SIGINT and SIGUSR1 (outside SLURM) stop a job at the end of the step they arrive
in: a checkpoint of that step, status ``interrupted`` with the signal, exit code 128 + the
signal's number, and a resume from the checkpoint equals the uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import torch
from job_harness import (
    SMOKE_WITH_PROBES,
    assert_same_steps,
    marked_at_step,
    metric_rows,
    signal_at_step,
    signal_while_training,
    start_train,
)

from optprobe.run.folder import JobFolder
from optprobe.run.job import train
from optprobe.run.signals import Interrupted

FINITE = [*SMOKE_WITH_PROBES, "trainer.max_epochs=10", "trainer.max_steps=10"]


def test_sigterm_finishes_the_step_checkpoints_it_and_resumes_exactly(make_cfg):
    full = make_cfg(FINITE, name="full")
    train(full)
    first = make_cfg([*FINITE, *signal_at_step(5, "SIGTERM")], name="job")
    with pytest.raises(Interrupted) as stopped:
        train(first)
    assert stopped.value.code == 128 + signal.SIGTERM
    job = JobFolder(first.paths.output_dir)
    summary = job.read_summary()
    assert summary["status"] == "interrupted" and "error" not in summary
    assert summary["interruption"] == {
        "signal": "SIGTERM",
        "step": 6,  # step 5 finished, then the checkpoint
        "checkpoint": str(job.last_checkpoint),
    }
    assert torch.load(job.last_checkpoint, weights_only=False)["global_step"] == 6
    assert sorted(metric_rows(job.path)) == list(range(6))  # step 5's values are kept
    assert "train/loss" in metric_rows(job.path)[5]
    assert summary["verdicts"]["probed"]["step"] == 6
    train(make_cfg([*FINITE, f"ckpt_path={job.last_checkpoint}"], name="job"))
    assert job.read_summary()["status"] == "completed"
    assert_same_steps(Path(full.paths.output_dir), job.path, 10)
    assert job.read_verdicts() == JobFolder(full.paths.output_dir).read_verdicts()


def test_sigterm_in_a_slurm_job_saves_the_checkpoint_a_requeued_job_resumes_from(
    make_cfg, fake_slurm_job
):
    """SLURM preempts with SIGTERM and may requeue the job: the checkpoint is the HPC one,
    which the job resumes from by itself when it runs again in its folder."""
    full = make_cfg(FINITE, name="full")
    train(full)
    with pytest.raises(Interrupted):
        train(make_cfg([*FINITE, *signal_at_step(3, "SIGTERM")], name="job"))
    job = JobFolder(full.paths.output_dir).path.parent / "job"
    record = JobFolder(job).read_summary()["interruption"]
    assert record == {"signal": "SIGTERM", "step": 4, "checkpoint": str(job / "hpc_ckpt_1.ckpt")}
    assert not fake_slurm_job.exists()  # no requeue from optprobe: SLURM decides
    train(make_cfg(FINITE, name="job"))  # as requeued: same command, same folder
    assert JobFolder(job).read_summary()["status"] == "completed"
    assert_same_steps(Path(full.paths.output_dir), job, 10)


def test_a_signal_before_training_stops_the_job_at_once(make_cfg):
    """No step runs yet: the job stops where it is, says so, and writes no checkpoint."""
    cfg = make_cfg(["debug=smoke", "probes=none", *signal_at_step(-1, "SIGINT")])
    with pytest.raises(Interrupted) as stopped:
        train(cfg)
    assert stopped.value.code == 128 + signal.SIGINT
    job = JobFolder(cfg.paths.output_dir)
    summary = job.read_summary()
    assert summary["status"] == "interrupted"
    assert summary["interruption"] == {"signal": "SIGINT", "step": 0, "checkpoint": None}
    assert not job.last_checkpoint.exists()


# ------------------------------------------------------------------ real processes (slow)
SUBPROCESS_RUN = [*FINITE, "trainer.max_steps=12", "callbacks.checkpoint.every_n_steps=1000"]


def finished(proc: subprocess.Popen) -> str:
    return proc.communicate(timeout=600)[0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("full") / "job"
    proc = start_train([*SUBPROCESS_RUN, f"hydra.run.dir={folder}"], folder.parent)
    output = finished(proc)
    assert proc.returncode == 0, output[-4000:]
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_signal_to_a_training_process_checkpoints_and_resumes_exactly(
    uninterrupted, tmp_path, signal_name
):
    job = JobFolder(tmp_path / "job")
    marker = tmp_path / "training"
    args = [*SUBPROCESS_RUN, f"hydra.run.dir={job.path}"]
    proc = start_train([*args, *marked_at_step(marker, 3)], tmp_path)
    output = signal_while_training(proc, marker, signal_name)
    assert proc.returncode == 128 + getattr(signal, signal_name), output[-4000:]
    summary = job.read_summary()
    assert summary["status"] == "interrupted", summary
    record = summary["interruption"]
    assert record["signal"] == signal_name and record["checkpoint"] == str(job.last_checkpoint)
    stopped = record["step"]
    assert 3 <= stopped < 12
    assert torch.load(job.last_checkpoint, weights_only=False)["global_step"] == stopped
    assert sorted(metric_rows(job.path)) == list(range(stopped))
    proc = start_train([*args, f"ckpt_path={job.last_checkpoint}"], tmp_path)
    output = finished(proc)
    assert proc.returncode == 0, output[-4000:]
    assert job.read_summary()["status"] == "completed"
    assert_same_steps(uninterrupted, job.path, 12)
    assert job.read_verdicts() == JobFolder(uninterrupted).read_verdicts()
