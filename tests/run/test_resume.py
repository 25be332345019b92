"""Resume equals an uninterrupted run (probe state included); bad input fails early and clearly."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl

from optprobe.run.job import train

COMMON = [
    "debug=smoke",
    "probes=[step,noise,curvature]",
    "probes.noise.every_n_steps=3",
    "probes.curvature.every_n_steps=4",
    "probes.curvature.lanczos_iters=5",
    "data.max_train_samples=64",
    "data.batch_size=16",
    "trainer.max_epochs=-1",
    "trainer.val_check_interval=null",
]


def rows(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "metrics.csv") as f:
        return {r["step"]: r for r in csv.DictReader(f)}


def test_resume_mid_epoch_matches_uninterrupted_run(make_cfg):
    full = make_cfg([*COMMON, "trainer.max_steps=10"], name="full")
    train(full)
    first = make_cfg([*COMMON, "trainer.max_steps=6"], name="split")
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = make_cfg([*COMMON, "trainer.max_steps=10", f"ckpt_path={ckpt}"], name="split")
    train(resumed)
    a, b = rows(Path(full.paths.output_dir)), rows(Path(resumed.paths.output_dir))
    assert sorted(a, key=int) == sorted(b, key=int) == [str(i) for i in range(10)]
    compared = 0
    for step in map(str, range(10)):
        keys = [k for k in a[step] if k.split("/")[0] in {"step", "noise", "curv", "train"}]
        for key in keys:
            if a[step][key] or b[step].get(key):
                assert float(b[step][key]) == pytest.approx(float(a[step][key]), rel=1e-9), (
                    step,
                    key,
                )
                compared += 1
    assert compared > 300
    va = json.loads((Path(full.paths.output_dir) / "verdicts.json").read_text())
    vb = json.loads((Path(resumed.paths.output_dir) / "verdicts.json").read_text())
    assert va == vb
    sa = json.loads((Path(full.paths.output_dir) / "summary.json").read_text())["probes"]
    sb = json.loads((Path(resumed.paths.output_dir) / "summary.json").read_text())["probes"]
    assert sa["step"]["held"] == sb["step"]["held"]


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
    full = make_cfg([*COMMON, "trainer.max_steps=10"], name="full")
    train(full)
    signal_cb = f"+callbacks.signal._target_={__name__}.SignalAtStep"
    first = make_cfg(
        [*COMMON, "trainer.max_steps=10", signal_cb, "+callbacks.signal.step=5"], name="job"
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
    train(make_cfg([*COMMON, "trainer.max_steps=10"], name="job"))
    assert json.loads((job / "summary.json").read_text())["status"] == "completed"
    a, b = rows(Path(full.paths.output_dir)), rows(job)
    assert sorted(a, key=int) == sorted(b, key=int) == [str(i) for i in range(10)]
    probe_keys = [k for k in a["9"] if k.split("/")[0] in {"step", "noise", "curv"}]
    for step in map(str, range(10)):
        for key in probe_keys:
            if a[step].get(key):
                assert float(b[step][key]) == pytest.approx(float(a[step][key]), rel=1e-9)
    va = json.loads((Path(full.paths.output_dir) / "verdicts.json").read_text())
    assert va == json.loads((job / "verdicts.json").read_text())
    assert fake_slurm_job.read_text().count("requeue") == 1


def test_resume_from_another_config_fails_before_training(make_cfg):
    first = make_cfg(["debug=smoke", "probes=none", "trainer.max_steps=2"], name="a")
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    other = make_cfg(
        ["debug=smoke", "probes=none", "optimizer=adam", f"ckpt_path={ckpt}"], name="b"
    )
    with pytest.raises(ValueError, match="another config.*optimizer"):
        train(other)
    assert not (Path(other.paths.output_dir) / "metrics.csv").exists()


@pytest.mark.parametrize("lr", ["0", "-0.1"])
def test_non_positive_learning_rate_is_rejected(make_cfg, lr):
    with pytest.raises(ValueError, match="optimizer.lr must be a positive number"):
        train(make_cfg(["debug=smoke", f"optimizer.lr={lr}"]))


def test_missing_checkpoint_is_a_clear_error(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path=.*does not exist"):
        train(make_cfg(["debug=smoke", f"ckpt_path={tmp_path / 'nope.ckpt'}"]))


@pytest.mark.parametrize("action", ["stop", "continue"])
def test_nan_loss_is_recorded_and_outputs_kept(make_cfg, action):
    cfg = make_cfg(
        [
            "debug=smoke",
            "probes=step",
            "optimizer.lr=1e30",
            "trainer.max_steps=6",
            f"callbacks.non_finite.action={action}",
        ]
    )
    train(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    record = summary["non_finite_loss"]
    assert record["count"] >= 1 and record["action"] == action
    steps = list(rows(out))
    if action == "stop":
        assert summary["status"] == "stopped: non-finite loss"
        assert len(steps) == record["first_step"] + 1
    else:
        assert summary["status"] == "completed" and len(steps) == 6
    assert (out / "config.yaml").is_file()
