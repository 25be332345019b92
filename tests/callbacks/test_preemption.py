"""SIGUSR1 (SLURM's warning before the time limit): checkpoint the step, requeue, and resume
exactly where the job stopped (optprobe.callbacks.preemption)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from job_harness import SMOKE_WITH_PROBES, metric_rows, signal_at_step

from optprobe.run.job import train

PROBE_FAMILIES = {"step", "noise", "curv"}


@pytest.mark.parametrize("max_epochs", [-1, 10])
def test_preemption_signal_checkpoints_the_step_requeues_and_resumes_exactly(
    make_cfg, fake_slurm_job, capsys, max_epochs
):
    run = [*SMOKE_WITH_PROBES, "trainer.max_steps=10", f"trainer.max_epochs={max_epochs}"]
    full = make_cfg(run, name="full")
    train(full)
    first = make_cfg([*run, *signal_at_step(5, "SIGUSR1")], name="job")
    train(first)
    assert "requeue 4242` failed" in capsys.readouterr().out
    job = Path(first.paths.output_dir)
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "preempted at step 6"  # step 5 finished, then checkpointed
    assert fake_slurm_job.read_text().split() == ["requeue", "4242"]
    assert (job / "hpc_ckpt_1.ckpt").is_file()
    assert not (job / "verdicts.json").exists()  # written when the requeued job finishes
    # the job again (as requeued): same command, same folder; Lightning finds hpc_ckpt_1.ckpt
    train(make_cfg(run, name="job"))
    assert json.loads((job / "summary.json").read_text())["status"] == "completed"
    a, b = metric_rows(Path(full.paths.output_dir)), metric_rows(job)
    assert sorted(a) == sorted(b) == list(range(10))
    probe_keys = {k for row in a.values() for k in row if k.split("/")[0] in PROBE_FAMILIES}
    assert {k.split("/")[0] for k in probe_keys} == PROBE_FAMILIES
    for step in range(10):
        for key in probe_keys:
            if key in a[step]:
                assert b[step][key] == pytest.approx(a[step][key], rel=1e-9, nan_ok=True), (
                    step,
                    key,
                )
    va = json.loads((Path(full.paths.output_dir) / "verdicts.json").read_text())
    assert va == json.loads((job / "verdicts.json").read_text())
    assert fake_slurm_job.read_text().count("requeue") == 1
