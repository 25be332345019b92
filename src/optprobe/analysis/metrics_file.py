"""Read a job's ``metrics.csv`` and say what is wrong with it: missing, empty, cut inside a
row (a job killed while writing, a partial copy), or logging a non-finite training loss.

``read_metrics_csv`` reads numbers; it cannot tell a cell a truncated row lost from a key
that was not logged, nor a logged ``nan`` loss from an empty cell. This module reads the
file once more as text to tell them apart.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

from optprobe.analysis.verdicts import read_metrics_csv

__all__ = ["LOSS_KEY", "Problem", "file_problems", "read_history"]

LOSS_KEY = "train/loss"
"""The training loss the job logs every step."""

Problem = tuple[str, str]
"""(reason, detail): a reason of :data:`optprobe.analysis.run_status.REASONS` and the facts."""


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"step": pd.Series(dtype=float)})


def _non_finite(token: str) -> bool:
    try:
        return not math.isfinite(float(token))
    except ValueError:
        return False


def file_problems(path: Path) -> list[Problem]:
    """What is wrong with a metrics.csv as text: rows whose field count differs from the
    header's, a file that does not end with a line break (cut inside its last row), and
    non-finite training losses."""
    text = path.read_text(errors="replace")
    if not text.strip():
        return [("no metrics", f"{path.name} is empty")]
    problems: list[Problem] = []
    if not text.endswith(("\n", "\r")):
        problems.append(("truncated", f"{path.name} ends inside a row (no final line break)"))
    rows = list(csv.reader(text.splitlines()))
    header = rows[0]
    short = [i + 1 for i, row in enumerate(rows[1:], start=1) if len(row) != len(header)]
    if short:
        problems.append(
            ("truncated", f"{path.name} line {short[0]} has the wrong number of fields")
        )
    if LOSS_KEY in header and "step" in header:
        col, step = header.index(LOSS_KEY), header.index("step")
        bad = [r[step] for r in rows[1:] if len(r) > col and r[col] and _non_finite(r[col])]
        if bad:
            problems.append(
                ("non-finite", f"{LOSS_KEY} is non-finite at {len(bad)} step(s), first {bad[0]}")
            )
    return problems


def read_history(path: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """The run's per-step metrics (``read_metrics_csv``) and the problems of the file; an
    empty history (column ``step`` only) when the file is missing or cannot be parsed."""
    if not path.is_file():
        return _empty(), [("no metrics", f"no {path.name}")]
    problems = file_problems(path)
    if problems and problems[0][0] == "no metrics":
        return _empty(), problems
    try:
        history = read_metrics_csv(path)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        return _empty(), [*problems, ("truncated", f"{path.name} cannot be parsed: {err}")]
    return history, problems
