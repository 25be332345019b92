"""``last.ckpt`` written at the end of an optimizer step (resumable mid-epoch)."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint
from typing_extensions import override

from optprobe.run.folder import JobFolder
from optprobe.validate import check_int


class LastStepCheckpoint(Checkpoint):
    """Save ``<dirpath>/last.ckpt`` every ``every_n_steps`` optimizer steps and at the last step.

    A ``Checkpoint``: Lightning runs it after every other callback, so probe state is saved
    after the probes saw the step. Saved at the end of a training batch (not at a possibly premature epoch end), so that a run
    resumed from it (``ckpt_path=...``) continues exactly where this one stopped: same batch
    of the same epoch, same probe state. Written to a temporary file first and renamed, so an
    interrupted save never destroys the previous checkpoint.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 100) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = check_int("callbacks.checkpoint.every_n_steps", every_n_steps, 1)

    @property
    def last_path(self) -> Path:
        return self.dirpath / JobFolder.LAST_CHECKPOINT

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        final = trainer.max_steps not in (None, -1) and step >= trainer.max_steps
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and (
            trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        )
        if step % self.every_n_steps == 0 or final or last_batch:
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> Path:
        """Atomically write last.ckpt (rank zero writes; every rank must call); its path."""
        save_atomically(trainer, self.last_path)
        return self.last_path


def save_atomically(trainer: pl.Trainer, path: str | Path) -> None:
    """``trainer.save_checkpoint`` to a temporary file renamed to ``path``, so an interrupted
    save never destroys the previous checkpoint (rank zero writes; every rank must call)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_checkpoint(tmp, weights_only=False)  # the whole state, said explicitly
    if trainer.is_global_zero:
        os.replace(tmp, path)
