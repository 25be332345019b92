"""Helpers for tests that run whole jobs: ``train.py`` in a subprocess, ``train(cfg)`` in this
process, and the job folder they leave (``metrics.csv``).

Imported as ``from job_harness import ...`` (tests/ is on ``sys.path`` through tests/conftest.py,
like ``harness``).
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT
from omegaconf import DictConfig

from optprobe.run.folder import JobFolder
from optprobe.run.job import train

# A smoke run with the step, noise and curvature probes at cadences that do not divide each
# other, over more than one epoch's worth of steps: what resume and preemption tests replay.
SMOKE_WITH_PROBES = [
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

# Every probe on (probes=full: step with curv_dir, reference, noise, curvature with the
# spectral density) at cadences that do not divide each other, cheap enough for tests.
FULL_PROBES = [
    "probes=full",
    "probes.noise.every_n_steps=3",
    "probes.curvature.every_n_steps=2",
    "probes.curvature.lanczos_iters=5",
    "probes.curvature.trace_max_matvecs=2",
    "probes.curvature.esd_iters=5",
]
# Keys compared step by step between a resumed and an uninterrupted run (timings differ).
COMPARED = ("train/loss", "step/", "step_fresh/", "noise/", "curv/", "ref/")


def assert_same_steps(full: Path, resumed: Path, steps: int, rel: float = 1e-9) -> set[str]:
    """The two jobs' metrics.csv hold steps 0..steps-1 and, at every step, the same compared
    keys with the same values (NaN where the other has NaN; ``rel=0``: bit for bit as
    written); returns the keys compared."""
    a, b = metric_rows(full), metric_rows(resumed)
    assert sorted(a) == sorted(b) == list(range(steps))
    compared = set()
    for step in range(steps):
        keys = {k for k in a[step].keys() | b[step].keys() if k.startswith(COMPARED)}
        for key in keys:
            assert key in a[step] and key in b[step], (step, key)
            if math.isnan(a[step][key]):
                assert math.isnan(b[step][key]), (step, key)
            elif rel == 0:
                assert b[step][key] == a[step][key], (step, key)
            else:
                assert b[step][key] == pytest.approx(a[step][key], rel=rel), (step, key)
            compared.add(key)
    return compared


class SignalAtStep(pl.Callback):
    """Sends this process ``signal_name`` when optimizer step ``step`` starts (as SLURM or a
    user would, while the step runs); ``step=-1``: while the trainer sets up, before training."""

    def __init__(self, step: int, signal_name: str = "SIGUSR1") -> None:
        self.step, self.signum = step, getattr(signal, signal_name)

    def setup(self, trainer, pl_module, stage) -> None:
        if self.step < 0:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def signal_at_step(step: int, signal_name: str) -> list[str]:
    """Overrides that add ``SignalAtStep`` to a job's callbacks."""
    return [
        "+callbacks.signal._target_=job_harness.SignalAtStep",
        f"+callbacks.signal.step={step}",
        f"+callbacks.signal.signal_name={signal_name}",
    ]


def run_train(
    args: list[str],
    log_dir: Path,
    env_extra: dict | None = None,
    timeout=600,
    prefix: tuple[str, ...] = (),
    without_wandb_env: bool = False,
) -> subprocess.CompletedProcess:
    """``train.py`` in a subprocess; ``without_wandb_env``: no WANDB_* variables inherited."""
    base = {k: v for k, v in os.environ.items() if not (without_wandb_env and k[:6] == "WANDB_")}
    env = {**base, "OPTPROBE_LOG_DIR": str(log_dir), **(env_extra or {})}
    return subprocess.run(
        [*prefix, sys.executable, "train.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_train(args: list[str], log_dir: Path, *, merge_stderr: bool = True) -> subprocess.Popen:
    """``train.py`` as a process of its own, for a test to signal or race: tests/ importable
    (for ``step_marker.StepMarker``), no SLURM variables (SIGUSR1 is then an interruption).
    ``merge_stderr=False`` keeps stderr on its own pipe (a test reading the error alone)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["OPTPROBE_LOG_DIR"] = str(log_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def marked_at_step(marker: Path, step: int) -> list[str]:
    """Overrides that add ``step_marker.StepMarker``: ``marker`` exists from ``step`` on."""
    return [
        "+callbacks.marker._target_=step_marker.StepMarker",
        f"+callbacks.marker.path={marker}",
        f"+callbacks.marker.step={step}",
    ]


def signal_while_training(proc: subprocess.Popen, marker: Path, signal_name: str) -> str:
    """Send ``signal_name`` to ``proc`` once ``marker`` exists (it trains); its output once
    it ended."""
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-4000:]
        time.sleep(0.1)
    proc.send_signal(getattr(signal, signal_name))
    return proc.communicate(timeout=600)[0]


def job_folder(log_dir: Path) -> Path:
    """The one job folder a single (non-sweep) ``train.py`` run made under ``log_dir``."""
    runs = list((log_dir / "train" / "runs").iterdir())
    assert len(runs) == 1, runs  # one output folder per job, not one per rank
    return runs[0]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, but the lock file (it names the last
    process that held the folder, also one that was refused): to check a folder is untouched."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != JobFolder.LOCK
    }


def metric_rows(folder: Path) -> dict[int, dict[str, float]]:
    """``metrics.csv`` of a job folder: step -> {key: value} for the keys logged at that step."""
    with open(folder / "metrics.csv") as f:
        return {
            int(r["step"]): {k: float(v) for k, v in r.items() if v != "" and k != "step"}
            for r in csv.DictReader(f)
        }


def trained_state(cfg: DictConfig) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """Train ``cfg`` in this process; returns the final module state (parameters and buffers),
    the optimizer's per-parameter state and the job folder."""
    _, objects = train(cfg)
    params = {k: v.detach().clone() for k, v in objects["module"].state_dict().items()}
    opt_state = objects["trainer"].optimizers[0].state_dict()["state"]
    return params, opt_state, Path(cfg.paths.output_dir)
