"""Progress arithmetic and wording shared by the per-job line (``callbacks.progress``) and the
sweep's "job i of N" line (``run.hydra_callbacks``). Pure functions, no torch: the Hydra side
imports it before any job starts."""

from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
    """``seconds`` as ``42s``, ``3m05s`` or ``2h07m`` (rounded to whole seconds / minutes)."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        minutes, secs = divmod(round(seconds), 60)
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m"


def remaining_s(done: float, total: float, elapsed_s: float) -> float | None:
    """Seconds left for ``total - done`` units at the mean rate so far (``elapsed_s / done``);
    None before the first unit or when the total is unknown (infinite)."""
    if done <= 0 or not math.isfinite(total):
        return None
    return max(0.0, total - done) * elapsed_s / done


def eta_text(done: float, total: float, elapsed_s: float) -> str:
    """``~3m05s left`` from ``remaining_s``, or ``time left unknown``."""
    left = remaining_s(done, total, elapsed_s)
    return "time left unknown" if left is None else f"~{format_duration(left)} left"


def sweep_line(index: int, total: int | None, finished_s: list[float]) -> str:
    """``[optprobe] job 3 of 30, ~25m10s left``: job ``index`` (1-based) of ``total`` starts
    (``total`` None: unknown). The estimate is the mean of ``finished_s`` (the seconds of the
    jobs finished so far in this process) times the jobs from this one to the last."""
    line = f"[optprobe] job {index}" + (f" of {total}" if total else "")
    if not finished_s or not total:
        return line
    mean_s = sum(finished_s) / len(finished_s)
    return f"{line}, ~{format_duration(mean_s * (total - index + 1))} left"
