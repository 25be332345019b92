"""Reading a benchmark results dict and writing markdown tables from it: one table helper for
every table of the report (``table``), and one for the tables with a column per model
(``model_table``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

MODEL_ORDER = ("mlp", "resnet18", "gpt", "cnn")


def get(d: dict | None, *keys: str) -> Any:
    """``d[k1][k2]...``, or None where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def is_num(x: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: Any, digits: int = 3) -> str:
    """A table cell: ``—`` for None, yes/no for bools, floats to ``digits`` digits."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}" if abs(x) < 10 else f"{x:.{max(digits - 2, 1)}f}"
    return str(x)


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A markdown table's lines."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def model_table(
    first: str,
    labels: Iterable[tuple[str, Any]],
    models: list[str],
    cell: Callable[[str, Any], str],
) -> list[str]:
    """A markdown table with a column per model: one row per ``(label, key)`` of ``labels``,
    its cells ``cell(model, key)``."""
    return table(
        [first, *models], ([label] + [cell(m, key) for m in models] for label, key in labels)
    )
