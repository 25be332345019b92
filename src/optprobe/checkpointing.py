"""Checkpoints written at the end of an optimizer step (resumable mid-epoch): ``last.ckpt``
every N steps, and the one SLURM's pre-termination signal asks for before a requeue."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from optprobe.distributed import from_rank_zero, rank_sum


class LastStepCheckpoint(Checkpoint):
    """Save ``<dirpath>/last.ckpt`` every ``every_n_steps`` optimizer steps and at the last step.

    A ``Checkpoint``: Lightning runs it after every other callback, so probe state is saved
    after the probes saw the step. Saved at the end of a training batch (not at a possibly premature epoch end), so that a run
    resumed from it (``ckpt_path=...``) continues exactly where this one stopped: same batch
    of the same epoch, same probe state. Written to a temporary file first and renamed, so an
    interrupted save never destroys the previous checkpoint.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 100) -> None:
        if (
            isinstance(every_n_steps, bool)
            or not isinstance(every_n_steps, int)
            or every_n_steps < 1
        ):
            raise ValueError(
                f"callbacks.checkpoint.every_n_steps must be an integer >= 1, got {every_n_steps!r}"
            )
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        final = trainer.max_steps not in (None, -1) and step >= trainer.max_steps
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and (
            trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        )
        if step % self.every_n_steps == 0 or final or last_batch:
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        """Atomically write last.ckpt (rank zero writes; every rank must call)."""
        tmp = self.dirpath / "last.ckpt.tmp"
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.last_path)


class PreemptionCheckpoint(Checkpoint):
    """On SLURM's pre-termination signal: finish the step, checkpoint it, requeue the job.

    SLURM sends ``signal`` (``--signal=USR1@<s>``) before the time limit or a preemption. The
    handler only records it; at the end of the current optimizer step, after every probe saw
    it, the run saves ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` (where Lightning looks when a
    SLURM job starts again), runs ``scontrol requeue <job>`` and waits for SLURM to stop it
    (at most ``termination_wait_s`` seconds). The requeued job resumes from that step, so its
    metrics and verdicts equal an uninterrupted run's. When the requeue fails, the run stops
    after the checkpoint (``summary.json``: ``preempted at step <k>``).
    Lightning's own handler, which saves wherever the signal lands (possibly mid-step), is
    off (``optprobe.train`` passes ``SLURMEnvironment(auto_requeue=False)``). Under DDP the
    ranks agree on the step (an all-reduce per step). Inactive outside SLURM jobs.
    """

    def __init__(self, signal_name: str = "SIGUSR1", termination_wait_s: float = 600.0) -> None:
        if not hasattr(signal, signal_name) or not signal_name.startswith("SIG"):
            raise ValueError(
                f"callbacks.preemption.signal_name={signal_name!r} is not a signal; e.g. SIGUSR1"
            )
        self.signum = getattr(signal, signal_name)
        self.received = False
        self.preempted_at_step: int | None = None
        self.termination_wait_s = float(termination_wait_s)
        self._previous_handler = None

    @staticmethod
    def slurm_job() -> str | None:
        """The id ``scontrol requeue`` needs (``<array id>_<task>`` for array tasks)."""
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        return os.environ.get("SLURM_JOB_ID")

    def _on_signal(self, signum, frame) -> None:
        self.received = True

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if self.slurm_job() is not None:
            self._previous_handler = signal.signal(self.signum, self._on_signal)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.slurm_job() is None or self.preempted_at_step is not None:
            return
        received = torch.tensor(float(self.received), device=pl_module.device)
        if not float(rank_sum(received)):  # a signal on any rank stops every rank here
            return
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        tmp = f"{path}.tmp"
        trainer.save_checkpoint(tmp)
        for logger in trainer.loggers:  # write the metrics so far before SLURM stops the job
            logger.finalize("preempted")
        self.preempted_at_step = trainer.global_step
        requeued = False
        if trainer.is_global_zero:
            os.replace(tmp, path)
            requeued = self._requeue(path)
        if from_rank_zero(requeued):
            self._await_termination()
        trainer.should_stop = True  # no requeue: stop; resume by hand from the checkpoint

    def _requeue(self, path: str) -> bool:
        job = self.slurm_job()
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode != 0:
            rank_zero_warn(
                f"preempted: saved {path} at step {self.preempted_at_step}, but `scontrol "
                f"requeue {job}` failed ({result.stderr.strip()}); the run stops here, resume "
                f"with ckpt_path={path}"
            )
            return False
        rank_zero_info(f"preempted: saved {path} at step {self.preempted_at_step}; requeued")
        return True

    def _await_termination(self) -> None:
        """Wait for SLURM to stop the requeued job. Returning would end the job normally,
        and the submitit launcher would take that for its result and stop waiting."""
        time.sleep(self.termination_wait_s)
        raise RuntimeError(
            f"job {self.slurm_job()} was requeued but SLURM did not stop it within "
            f"{self.termination_wait_s:g} s"
        )
