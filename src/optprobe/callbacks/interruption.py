"""Interruptions (SIGTERM, SIGINT, SIGUSR1 outside SLURM): finish the step, checkpoint, stop."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from typing_extensions import override

from optprobe.callbacks.checkpoints import LastStepCheckpoint, save_atomically
from optprobe.callbacks.preemption import PreemptionCheckpoint
from optprobe.dist import rank_max, world_size
from optprobe.log import say
from optprobe.run.folder import JobFolder
from optprobe.run.signals import SIGNALS, Interrupted


class InterruptionCheckpoint(Checkpoint):
    """On SIGTERM, SIGINT or SIGUSR1: let the optimizer step finish, save ``last.ckpt`` at its
    end and stop training (``optprobe.run.signals`` says what happens outside training).

    Every job has one (``optprobe.run.build`` adds it). From the first step to the end of
    training a signal is only recorded; at the end of the step it arrived in (after every
    probe saw that step, and after ``LastStepCheckpoint``) the ranks agree on it, the
    checkpoint is written where ``callbacks.checkpoint`` writes it (or
    ``<job>/checkpoints/last.ckpt`` without one; ``<job>/hpc_ckpt_<n>.ckpt`` in a SLURM job)
    and training stops without a validation.
    A signal after the last step's check is handled at the end of training the same way.
    ``record`` then holds the signal, the step and the checkpoint; the job writes them to
    summary.json (status ``interrupted``) and exits with 128 + the signal's number. SLURM's
    pre-termination signal is left to ``PreemptionCheckpoint`` when that is active.
    """

    def __init__(self) -> None:
        self.record: dict[str, Any] | None = None
        self._stepped = False

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        requeue = {
            int(c.signum)
            for c in trainer.callbacks
            if isinstance(c, PreemptionCheckpoint) and c.slurm_job() is not None
        }
        SIGNALS.start_deferring(leave=requeue)

    @override
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._stepped = True

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stepped and self.record is None:  # not inside a gradient accumulation
            self.stop_if_signalled(trainer, pl_module)
        self._stepped = False

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.record is None:
            self.stop_if_signalled(trainer, pl_module)
        SIGNALS.stop_deferring()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        SIGNALS.stop_deferring()

    def stop_if_signalled(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """When a signal arrived on any rank: checkpoint this step and stop (all ranks)."""
        signum = int(getattr(signal, SIGNALS.received)) if SIGNALS.received else 0
        if world_size() > 1:  # one all-reduce per step; none (and no device sync) alone
            signum = int(rank_max(torch.tensor(signum, device=pl_module.device)))
        if not signum:
            return
        path = self.save(trainer)
        self.record = {
            "signal": signal.Signals(signum).name,
            "step": trainer.global_step,
            "checkpoint": str(path),
        }
        trainer.should_stop = True
        trainer.limit_val_batches = 0  # stop now: no validation after the interrupted step
        say(
            f"{self.record['signal']}: stopped after step {trainer.global_step}, saved {path}; "
            f"resume with ckpt_path={path}"
        )

    @staticmethod
    def save(trainer: pl.Trainer) -> Path:
        """Write last.ckpt where the job's step checkpoints go; its path. In a SLURM job the
        checkpoint is ``hpc_ckpt_<n>.ckpt`` instead, which a job that SLURM requeues (after a
        preemption) resumes from by itself."""
        if PreemptionCheckpoint.slurm_job() is not None:
            path = Path(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
            save_atomically(trainer, path)
            return path
        for callback in trainer.callbacks:
            if isinstance(callback, LastStepCheckpoint):
                return callback.save(trainer)
        path = JobFolder(trainer.default_root_dir).last_checkpoint
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(trainer, path)
        return path


def handled_interruption(trainer: pl.Trainer | None) -> dict[str, Any] | None:
    """The record of the signal that stopped training at a step's end (None: no signal)."""
    callbacks = trainer.callbacks if trainer is not None else []
    return next((c.record for c in callbacks if isinstance(c, InterruptionCheckpoint)), None)


def raise_if_interrupted(trainer: pl.Trainer) -> None:
    """After a job that a signal stopped wrote its summary: exit with ``Interrupted``."""
    record = handled_interruption(trainer)
    if record is not None:
        raise Interrupted(record["signal"], record)


def interruption_record(trainer: pl.Trainer | None, err: Interrupted) -> dict[str, Any]:
    """What summary.json says about ``err``: the signal, the step the job stopped after and
    the checkpoint to resume from. A signal outside training (setup, the reference run, the
    summary) stopped the job at once: no checkpoint was written for it (``None``)."""
    handled = handled_interruption(trainer)
    if handled is not None:
        return handled
    step = trainer.global_step if trainer is not None else None
    return {"signal": err.signal_name, "step": step, "checkpoint": None}
