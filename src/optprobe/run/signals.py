"""Signals that stop a job: SIGTERM, SIGINT and SIGUSR1, and what the process does with them.

While a job runs (``watching_signals``) optprobe handles these three signals itself:

- inside the training loop (``SIGNALS.start_deferring`` .. ``stop_deferring``, done by
  ``optprobe.callbacks.interruption.InterruptionCheckpoint``) a signal is only recorded; the
  callback lets the current optimizer step finish, saves a checkpoint at its end and stops
  training, and the job then exits with ``Interrupted``;
- anywhere else (building the job, the reference run's setup, writing the summary) no step is
  in progress, so the handler raises ``Interrupted`` at once.

``Interrupted`` is a ``SystemExit`` with code 128 + the signal's number (143 for SIGTERM, 130
for SIGINT, 138 for SIGUSR1), the code a shell reports for a process that a signal stopped:
the job (and a sweep it belongs to) stops with a non-zero status, and ``except Exception``
blocks (Hydra's, a sweep's) let it through.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any

INTERRUPT_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class Interrupted(SystemExit):
    """A job stopped by ``signal_name``; ``record`` is what its summary.json keeps."""

    def __init__(self, signal_name: str, record: dict[str, Any] | None = None) -> None:
        super().__init__(128 + int(getattr(signal, signal_name)))
        self.signal_name = signal_name
        self.record = {"signal": signal_name, **(record or {})}

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}"


class SignalWatch:
    """The process's handler of ``INTERRUPT_SIGNALS`` (one instance: ``SIGNALS``).

    ``received`` is the first signal that arrived (its name), ``deferred`` whether a signal
    only gets recorded (inside the training loop) or raises ``Interrupted`` at once.
    """

    def __init__(self) -> None:
        self.depth = 0  # nested watching_signals (a job that runs the reference run inside)
        self.received: str | None = None
        self.deferred = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
        if not self.deferred:
            raise Interrupted(name)

    def install(self, leave: Iterable[int] = ()) -> None:
        """Handle the signals here (again: Lightning puts its own SIGTERM handler in front at
        the start of every fit), except the signal numbers in ``leave``."""
        if threading.current_thread() is not threading.main_thread():
            return
        leave = set(leave)
        for name in INTERRUPT_SIGNALS:
            signum = int(getattr(signal, name))
            if signum not in leave:
                self._previous.setdefault(signum, signal.signal(signum, self._handle))

    def restore(self) -> None:
        """Put back the handlers that were there before ``install``."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def start_deferring(self, leave: Iterable[int] = ()) -> None:
        """From now on a signal is only recorded (the training loop checks at step ends)."""
        if self.depth == 0:  # a trainer run outside optprobe's train(): watch for it alone
            self.received = None
        self.install(leave)
        self.deferred = True

    def stop_deferring(self) -> None:
        """Signals raise ``Interrupted`` at once again (or are no longer handled here, when
        no job watches)."""
        self.deferred = False
        if self.depth == 0:
            self.restore()


SIGNALS = SignalWatch()


@contextlib.contextmanager
def watching_signals() -> Iterator[SignalWatch]:
    """Handle ``INTERRUPT_SIGNALS`` for the duration of one job (nested jobs share it)."""
    if SIGNALS.depth == 0:
        SIGNALS.received, SIGNALS.deferred = None, False
        SIGNALS.install()
    SIGNALS.depth += 1
    try:
        yield SIGNALS
    finally:
        SIGNALS.depth -= 1
        if SIGNALS.depth == 0:
            SIGNALS.deferred = False
            SIGNALS.restore()
