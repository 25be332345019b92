"""A callback for tests that signal a ``python train.py`` subprocess while it trains: from step
``step`` on, it touches ``path`` at the end of every step and pauses ``pause_s`` seconds, so a
signal sent once the file exists lands while a step runs. Importable in the subprocess when
tests/ is on its PYTHONPATH."""

from __future__ import annotations

import time
from pathlib import Path

from pytorch_lightning.callbacks import Callback


class StepMarker(Callback):
    def __init__(self, path: str, step: int, pause_s: float = 0.5) -> None:
        self.path, self.step, self.pause_s = Path(path), step, pause_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            self.path.touch()
            time.sleep(self.pause_s)
