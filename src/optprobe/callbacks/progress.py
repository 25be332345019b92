"""A compact progress line for batch logs, in place of the progress bar (which rewrites one
terminal line with carriage returns and fills a log file with them)."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from optprobe.log import say
from optprobe.progress import eta_text, format_duration


class ProgressLine(Callback):
    """Print ``[optprobe] epoch 1 step 40/200 loss=0.512 elapsed 1m02s, ~4m08s left`` every
    ``every_s`` seconds or every ``fraction`` of the steps (but not within ``min_gap_s`` seconds
    of the previous line, so a job of a few seconds prints only its last step), whichever comes
    first, and at the last step. The estimate is this segment's mean time per step (a resume
    starts a segment).
    """

    def __init__(self, every_s: float = 60.0, fraction: float = 0.1, min_gap_s: float = 5.0):
        if every_s <= 0 or not 0 < fraction <= 1 or min_gap_s < 0:
            raise ValueError(
                f"ProgressLine needs every_s > 0, 0 < fraction <= 1 and min_gap_s >= 0, got "
                f"every_s={every_s}, fraction={fraction}, min_gap_s={min_gap_s}"
            )
        self.every_s = every_s
        self.fraction = fraction
        self.min_gap_s = min_gap_s
        self.started = self.last_time = 0.0
        self.first_step = self.last_step = 0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = self.last_time = time.perf_counter()
        self.first_step = self.last_step = trainer.global_step

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, float(trainer.estimated_stepping_batches)
        now = time.perf_counter()
        since = now - self.last_time
        due = (
            since >= self.every_s
            or (step - self.last_step >= self.fraction * total and since >= self.min_gap_s)
            or step >= total
            or trainer.should_stop
        )
        if not due or step == self.last_step:
            return
        self.last_time, self.last_step = now, step
        elapsed = now - self.started
        loss = trainer.callback_metrics.get("train/loss")
        of_total = f"/{int(total)}" if total != float("inf") else ""
        say(
            f"[optprobe] epoch {trainer.current_epoch} step {step}{of_total}"
            + (f" loss={float(loss):.4g}" if loss is not None else "")
            + f" elapsed {format_duration(elapsed)}, "
            + eta_text(step - self.first_step, total - self.first_step, elapsed)
        )
