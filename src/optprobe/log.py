"""The one output path of optprobe: messages for the person running it, from rank 0 only.

``say`` is for progress and results (tables, "reusing x* from ..."), ``warn`` for a result
that needs attention (an offline W&B run, a replay that left the reference trajectory). Both
go through the ``optprobe`` logger to the current standard output, unprefixed, so the text
reads the same in a terminal and in a batch log; other ranks of a DDP job stay silent.
"""

from __future__ import annotations

import logging
import sys

from optprobe.rank import is_primary

LOGGER = logging.getLogger("optprobe")


class _CurrentStdout(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stdout`` is at the time (pytest swaps it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


if not LOGGER.handlers:
    _handler = _CurrentStdout()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(_handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def say(message: str) -> None:
    """Tell the user something (rank 0 only)."""
    if is_primary():
        LOGGER.info(message)


def warn(message: str) -> None:
    """Warn the user about a result that needs attention (rank 0 only), prefixed ``warning:``."""
    if is_primary():
        LOGGER.warning(f"warning: {message}")
