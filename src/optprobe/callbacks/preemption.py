"""Preemption: on SLURM's pre-termination signal, finish the step, checkpoint it, requeue."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from typing_extensions import override

from optprobe.callbacks.checkpoints import save_atomically
from optprobe.dist import from_rank_zero, rank_sum
from optprobe.log import say, warn


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
        save_atomically(trainer, path)
        for logger in trainer.loggers:  # write the metrics so far before SLURM stops the job
            logger.finalize("preempted")
        self.preempted_at_step = trainer.global_step
        requeued = False
        if trainer.is_global_zero:
            requeued = self._requeue(path)
        if from_rank_zero(requeued):
            self._await_termination()
        trainer.should_stop = True  # no requeue: stop; resume by hand from the checkpoint

    def _requeue(self, path: str) -> bool:
        job = self.slurm_job()
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode != 0:
            warn(
                f"preempted: saved {path} at step {self.preempted_at_step}, but `scontrol "
                f"requeue {job}` failed ({result.stderr.strip()}); the run stops here, resume "
                f"with ckpt_path={path}"
            )
            return False
        say(f"preempted: saved {path} at step {self.preempted_at_step}; requeued")
        return True

    def _await_termination(self) -> None:
        """Wait for SLURM to stop the requeued job. Returning would end the job normally,
        and the submitit launcher would take that for its result and stop waiting. SLURM's
        SIGTERM ends the process here: it is not an interruption to checkpoint (that is done)."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(self.termination_wait_s)
        raise RuntimeError(
            f"job {self.slurm_job()} was requeued but SLURM did not stop it within "
            f"{self.termination_wait_s:g} s"
        )
