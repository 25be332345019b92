"""Stop (or flag) a run whose training loss became NaN or inf."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from optprobe.log import warn
from optprobe.validate import check_choice

ACTIONS = ("stop", "continue")


class NonFiniteLossGuard(Callback):
    """Record a NaN/inf training loss; stop the run (``action=stop``) or go on (``continue``).

    The step and the count are written to the job's summary.json (``non_finite_loss``);
    everything the run wrote so far is kept, and the last checkpoint is not overwritten by
    a non-finite state when stopping.
    """

    def __init__(self, action: str = "stop") -> None:
        self.action = check_choice("callbacks.non_finite.action", action, ACTIONS)
        self.count = 0
        self.first_step: int | None = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or torch.isfinite(loss).all():
            return
        self.count += 1
        if self.first_step is None:
            self.first_step = trainer.global_step - 1  # the optimizer step that just ran
            warn(f"non-finite training loss at step {self.first_step} ({self.action})")
        if self.action == "stop":
            trainer.should_stop = True

    def summary(self) -> dict[str, Any] | None:
        if not self.count:
            return None
        return {"count": self.count, "first_step": self.first_step, "action": self.action}

    @property
    def state_key(self) -> str:
        return "optprobe.NonFiniteLossGuard"

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first_step": self.first_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.count, self.first_step = state_dict["count"], state_dict["first_step"]
