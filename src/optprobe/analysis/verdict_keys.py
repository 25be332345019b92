"""What identifies a per-run verdict entry, and what the registry says about it.

The cross-run analysis is written over the verdict entries' unique key, never over a fixed
list of assumptions: the key is the verdict id of a registry *variant* (L choice, batch
scheme, valid/informative), ``<assumption id>:<axis value>:...`` (``AssumptionVerdict.id``);
in the verdicts table and comparison.csv it is the column ``assumption`` (the base id is
``base_assumption``). A variant inherits everything the registry says about its base
assumption (label, kind, the study finding it bears on). Only this module knows how a key is
spelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from optprobe.assumptions import ASSUMPTIONS, Assumption, Variant, variant_by_id

__all__ = [
    "KEY_COLUMN",
    "base_assumption",
    "finding_of",
    "decides",
    "is_headline",
    "key_label",
    "verdict_key",
]

KEY_COLUMN = "assumption"
"""The column of the verdicts table (and of comparison.csv) holding the verdict key."""

_VARIANT_SEPARATOR = ":"


def verdict_key(entry: Any) -> str:
    """The unique key of one per-run verdict entry (an ``AssumptionVerdict``, a row of the
    verdicts table as a dict or Series)."""
    if isinstance(entry, (Mapping, pd.Series)):
        return str(entry[KEY_COLUMN])
    return str(entry.id)


def base_assumption(key: str) -> Assumption | None:
    """The registry record a verdict key is about (a variant's base), None when unknown."""
    return ASSUMPTIONS.get(str(key).split(_VARIANT_SEPARATOR, 1)[0])


def finding_of(key: str) -> str | None:
    """The study finding (registry ``finding`` field) a verdict key bears on, or None."""
    base = base_assumption(key)
    return base.finding if base is not None else None


def key_label(key: str, fallback: str | None = None) -> str:
    """How a verdict key reads: the variant's label where the registry knows variants, else
    the base assumption's label (with the variant suffix), else ``fallback`` or the key."""
    variant = _variant(key)
    if variant is not None:
        return str(variant.label)
    base = base_assumption(key)
    if base is None:
        return fallback or str(key)
    rest = str(key)[len(base.id) :].lstrip(_VARIANT_SEPARATOR)
    return f"{base.label} ({rest.replace(_VARIANT_SEPARATOR, ', ')})" if rest else base.label


def is_headline(key: str) -> bool:
    """Whether a verdict key is a headline variant (every key is, until the registry defines
    variants; then the registry decides)."""
    variant = _variant(key)
    return True if variant is None else bool(variant.headline)


def decides(key: str) -> bool:
    """Whether a verdict key decides its finding (``Variant.decides``; every key the registry
    does not know as a variant is judged as a headline)."""
    variant = _variant(key)
    return True if variant is None else bool(variant.decides)


def _variant(key: str) -> Variant | None:
    """The registry's variant record for ``key`` (None for a key it does not know)."""
    try:
        return variant_by_id(str(key))
    except KeyError:
        return None
