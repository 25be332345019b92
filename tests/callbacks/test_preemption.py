"""SIGUSR1 (SLURM's warning before the time limit): checkpoint the step, requeue, and resume
exactly where the job stopped (optprobe.callbacks.preemption)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
from job_harness import SMOKE_WITH_PROBES, metric_rows

from optprobe.run.job import train

PROBE_FAMILIES = {"step", "noise", "curv"}


class SignalAtStep(pl.Callback):
    """Sends this process ``SIGUSR1`` when optimizer step ``step`` starts (as SLURM would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture
def fake_slurm_job(tmp_path, monkeypatch) -> Path:
    """SLURM job variables and an ``scontrol`` on PATH that records its arguments and fails
    (a real requeue would stop this test's own process)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for key, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "optprobe-test",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }.items():
        monkeypatch.setenv(key, value)
    return calls


def test_preemption_signal_checkpoints_the_step_requeues_and_resumes_exactly(
    make_cfg, fake_slurm_job, capsys
):
    full = make_cfg([*SMOKE_WITH_PROBES, "trainer.max_steps=10"], name="full")
    train(full)
    signal_cb = f"+callbacks.signal._target_={__name__}.SignalAtStep"
    first = make_cfg(
        [*SMOKE_WITH_PROBES, "trainer.max_steps=10", signal_cb, "+callbacks.signal.step=5"],
        name="job",
    )
    train(first)
    assert "requeue 4242` failed" in capsys.readouterr().out
    job = Path(first.paths.output_dir)
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "preempted at step 6"  # step 5 finished, then checkpointed
    assert fake_slurm_job.read_text().split() == ["requeue", "4242"]
    assert (job / "hpc_ckpt_1.ckpt").is_file()
    assert not (job / "verdicts.json").exists()  # written when the requeued job finishes
    # the job again (as requeued): same command, same folder; Lightning finds hpc_ckpt_1.ckpt
    train(make_cfg([*SMOKE_WITH_PROBES, "trainer.max_steps=10"], name="job"))
    assert json.loads((job / "summary.json").read_text())["status"] == "completed"
    a, b = metric_rows(Path(full.paths.output_dir)), metric_rows(job)
    assert sorted(a) == sorted(b) == list(range(10))
    probe_keys = {k for row in a.values() for k in row if k.split("/")[0] in PROBE_FAMILIES}
    assert {k.split("/")[0] for k in probe_keys} == PROBE_FAMILIES
    for step in range(10):
        for key in probe_keys:
            if key in a[step]:
                assert b[step][key] == pytest.approx(a[step][key], rel=1e-9), (step, key)
    va = json.loads((Path(full.paths.output_dir) / "verdicts.json").read_text())
    assert va == json.loads((job / "verdicts.json").read_text())
    assert fake_slurm_job.read_text().count("requeue") == 1
