"""SOAP (Vyas et al. 2024: Adam in the eigenbasis of Shampoo's preconditioner) from heavyball,
with ``torch.compile`` off by default."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from optprobe.extras import require


def soap(
    params: Iterable[Any],
    lr: float = 3e-3,
    betas: Sequence[float] = (0.9, 0.95),
    shampoo_beta: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    precondition_frequency: int = 2,
    max_precond_dim: int = 2048,
    warmup_steps: int = 0,
    compile: bool = False,
) -> torch.optim.Optimizer:
    """``heavyball.SOAP`` with these settings (heavyball's names and meanings; named here so
    that a mistyped key is refused before the run). ``compile=False`` (default) sets
    heavyball's process-wide ``utils.compile_mode`` to None: its fused kernels then run
    eagerly, which on a CPU avoids minutes of compilation per shape; ``compile=True`` leaves
    heavyball's mode."""
    # imported here: heavyball takes seconds to import, and only the [optimizers] extra has it
    heavyball = require("heavyball", "optimizer=soap")

    if not compile:
        heavyball.utils.compile_mode = None
    return heavyball.SOAP(
        params,
        lr=lr,
        betas=tuple(betas),
        shampoo_beta=shampoo_beta,
        eps=eps,
        weight_decay=weight_decay,
        precondition_frequency=precondition_frequency,
        max_precond_dim=max_precond_dim,
        warmup_steps=warmup_steps,
        compile_step=compile,
    )
