"""SOAP (Vyas et al. 2024: Adam in the eigenbasis of Shampoo's preconditioner) from heavyball,
with ``torch.compile`` off by default."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def soap(params: Iterable[Any], compile: bool = False, **kwargs: Any) -> torch.optim.Optimizer:
    """``heavyball.SOAP(params, **kwargs)``. ``compile=False`` (default) sets heavyball's
    process-wide ``utils.compile_mode`` to None: its fused kernels then run eagerly, which on a
    CPU avoids minutes of compilation per shape; ``compile=True`` leaves heavyball's mode."""
    import heavyball  # imported here: heavyball takes seconds to import

    if not compile:
        heavyball.utils.compile_mode = None
    return heavyball.SOAP(params, compile_step=compile, **kwargs)
