"""The wall time of a job over all its segments (a start, then one segment per resume)."""

from __future__ import annotations

import time
from typing import Any

from pytorch_lightning.callbacks import Callback


class WallClock(Callback):
    """Seconds of this segment (``segment_s``, since ``started``, a ``time.perf_counter``
    value) and of the whole job (``total_s``): this segment plus the earlier segments, each up
    to the checkpoint the next one resumed from. The total travels in checkpoints (its
    ``state_dict``), so it survives a resume into another process, folder or machine; time an
    earlier segment spent after its last checkpoint is not counted (that work was redone).
    """

    STATE_KEY = "optprobe.WallClock"

    def __init__(self, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self.earlier_s = 0.0  # seconds of the segments before this one

    @property
    def state_key(self) -> str:
        return self.STATE_KEY

    def segment_s(self) -> float:
        """Seconds since this segment started."""
        return time.perf_counter() - self.started

    def total_s(self) -> float:
        """Seconds of the earlier segments plus this one so far."""
        return self.earlier_s + self.segment_s()

    def state_dict(self) -> dict[str, Any]:
        return {"total_s": self.total_s()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier_s = float(state_dict["total_s"])
