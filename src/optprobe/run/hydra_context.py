"""What Hydra knows about the current job: multirun or not, the sweep, overrides, choices."""

from __future__ import annotations

import os

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def hydra_identity() -> tuple[str | None, list[str]]:
    """(sweep group, task overrides) of the current Hydra job, or (None, []) outside Hydra."""
    if not HydraConfig.initialized():
        return None, []
    hc = HydraConfig.get()
    group = os.path.basename(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    return group, list(hc.overrides.task)


def hydra_choices() -> dict[str, str]:
    """The config-group options this job was composed from (``optimizer: adam``, ...)."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: v for k, v in choices.items() if not k.startswith("hydra") and v is not None}
