"""One check per kind of setting (integer, number, choice, flag), each raising a ValueError
that names the config key, what it must be, what it got and an example of a good value."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any


def _fail(name: str, must: str, value: Any, example: Any, hint: str) -> ValueError:
    extra = f" ({hint})" if hint else ""
    return ValueError(f"{name} must be {must}{extra}, got {value!r}; e.g. {name}={example}")


def is_int(value: Any) -> bool:
    """True for integers (numpy's too), never for booleans."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(
    name: str, value: Any, minimum: int | None = None, *, example: Any = None, hint: str = ""
) -> int:
    """``value`` as ``int`` (>= ``minimum`` when given), or a ValueError naming ``name``."""
    if not is_int(value) or (minimum is not None and value < minimum):
        must = "an integer" if minimum is None else f"an integer >= {minimum}"
        good = example if example is not None else max(minimum or 0, 1) * 10
        raise _fail(name, must, value, good, hint)
    return int(value)


def check_optional_int(
    name: str, value: Any, minimum: int | None = None, *, example: Any = None, hint: str = ""
) -> int | None:
    """Like :func:`check_int`, but ``None`` passes (and is returned)."""
    return None if value is None else check_int(name, value, minimum, example=example, hint=hint)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    example: Any = None,
    hint: str = "",
) -> float:
    """``value`` as a finite ``float`` within the given bounds, or a ValueError naming ``name``.

    ``low_open``/``high_open`` exclude the bound itself (``low=0, low_open=True``: > 0).
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        must = "a finite number" + (f" {' and '.join(parts)}" if parts else "")
        raise _fail(name, must, value, example if example is not None else "0.1", hint)
    return float(value)


def check_choice(name: str, value: Any, choices: Collection[Any], *, hint: str = "") -> Any:
    """``value`` if it is one of ``choices``, or a ValueError listing them."""
    if value not in choices:
        listed = ", ".join(str(c) for c in choices)
        raise _fail(name, f"one of {listed}", value, next(iter(choices)), hint)
    return value


def check_bool(name: str, value: Any, *, hint: str = "") -> bool:
    """``value`` if it is ``true`` or ``false``, or a ValueError naming ``name``."""
    if not isinstance(value, bool):
        raise _fail(name, "true or false", value, "true", hint)
    return value
