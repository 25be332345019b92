"""Input that would train nothing or fail inside torch/Lightning stops before training with
the problem and the fix named (optprobe.run.input_checks, optprobe.run.checkpoint_files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from optprobe.run.checkpoint_files import DamagedCheckpointError
from optprobe.run.folder import JobFolder
from optprobe.run.job import train

SMOKE = ["debug=smoke", "probes=none"]


@pytest.mark.parametrize("override", ["trainer.max_steps=0", "trainer.max_epochs=0"])
def test_a_budget_that_trains_nothing_is_refused(make_cfg, override):
    cfg = make_cfg([*SMOKE, override])
    with pytest.raises(ValueError, match=f"{override} trains nothing; give a positive number"):
        train(cfg)
    job = JobFolder(cfg.paths.output_dir)
    assert not job.metrics.exists() and not job.last_checkpoint.exists()
    assert json.loads(job.summary.read_text())["status"] == "failed"


def test_unknown_optimizer_key_names_it_and_the_valid_ones(make_cfg):
    cfg = make_cfg([*SMOKE, "+optimizer.lrr=0.1"])
    with pytest.raises(ValueError) as err:
        train(cfg)
    message = str(err.value)
    assert "optimizer.lrr: not an option of torch.optim.SGD" in message
    assert "Its options: lr, momentum, dampening, weight_decay, nesterov" in message
    assert "Did you mean optimizer.lr?" in message
    assert not JobFolder(cfg.paths.output_dir).metrics.exists()


def test_unknown_scheduler_key_is_named_too(make_cfg):
    with pytest.raises(ValueError, match="scheduler.warmup: not an option of optprobe.schedules"):
        train(make_cfg([*SMOKE, "scheduler=cosine", "+scheduler.warmup=5"]))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_checkpoint_is_named_with_the_jobs_other_checkpoint(make_cfg):
    first = make_cfg(SMOKE, name="job")
    train(first)
    job = JobFolder(first.paths.output_dir)
    hpc = job.path / "hpc_ckpt_1.ckpt"
    shutil.copy(job.last_checkpoint, hpc)
    truncate(job.last_checkpoint)
    metrics = job.metrics.read_bytes()
    resumed = make_cfg([*SMOKE, "trainer.max_steps=8", f"ckpt_path={job.last_checkpoint}"], "job")
    with pytest.raises(DamagedCheckpointError) as err:
        train(resumed)
    message = str(err.value)
    assert f"ckpt_path={job.last_checkpoint} is damaged" in message
    assert f"{hpc} (intact)" in message and f"ckpt_path={hpc}" in message
    assert job.metrics.read_bytes() == metrics  # stopped before training


def test_damaged_slurm_requeue_checkpoint_is_named(make_cfg, monkeypatch):
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "t"}.items():
        monkeypatch.setenv(key, value)
    first = make_cfg(SMOKE, name="job")
    train(first)
    job = JobFolder(first.paths.output_dir)
    (job.path / "hpc_ckpt_1.ckpt").write_bytes(b"PK\x03\x04 cut off")
    with pytest.raises(DamagedCheckpointError) as err:
        train(make_cfg(SMOKE, name="job"))  # the requeued job: Lightning would load hpc_ckpt_1
    message = str(err.value)
    assert f"the SLURM requeue checkpoint={job.path / 'hpc_ckpt_1.ckpt'} is damaged" in message
    assert f"{job.last_checkpoint} (intact)" in message


def test_damaged_reference_checkpoint_is_named(make_cfg, tmp_path):
    x_star = tmp_path / "x_star.ckpt"
    x_star.write_bytes(b"not a checkpoint")
    cfg = make_cfg(["debug=smoke", "probes=reference", f"probes.reference.ckpt={x_star}"])
    with pytest.raises(DamagedCheckpointError, match=f"probes.reference.ckpt={x_star} is damaged"):
        train(cfg)
