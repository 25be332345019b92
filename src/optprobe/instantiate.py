"""Instantiate named dict entries of the config (callbacks, probes, loggers)."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig


def instantiate_named(group: DictConfig | dict | None, kind: str) -> list[Any]:
    """Instantiate every non-null entry of a ``name: {_target_: ...}`` mapping.

    A null entry (``probes.curvature=null`` on the command line) is skipped, so each item is
    removable. An entry without ``_target_`` is an error naming ``<kind>.<name>``.
    """
    if not group:
        return []
    objects = []
    for name, entry in group.items():
        if entry is None:
            continue
        if not isinstance(entry, (DictConfig, dict)) or "_target_" not in entry:
            raise ValueError(
                f"{kind}.{name} must be a mapping with a _target_ (or null to turn it off), "
                f"got {entry!r}"
            )
        objects.append(hydra.utils.instantiate(entry))
    return objects
