"""Learning-rate schedules as multipliers of the optimizer's base lr, stepped once per step."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _check(total_steps: int, warmup_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(
            f"schedule needs total_steps >= 1, got {total_steps}; set trainer.max_steps"
        )
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"scheduler.warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}]"
        )


def constant(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """lr_t = lr (kept as a scheduler so every run logs the same lr key)."""
    return LambdaLR(optimizer, lambda step: 1.0)


def _warmup_then(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int,
    decay: Callable[[float], float],
) -> LambdaLR:
    """Multiplier (step+1)/warmup during warmup, then ``decay(progress)`` with progress in [0, 1]."""
    _check(total_steps, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay(min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return LambdaLR(optimizer, factor)


def cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup to lr, then cosine decay to ``min_ratio * lr`` at ``total_steps``."""
    return _warmup_then(
        optimizer,
        total_steps,
        warmup_steps,
        lambda p: min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)),
    )


def warmup_linear(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 100, min_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup to lr over ``warmup_steps``, then linear decay to ``min_ratio * lr``."""
    return _warmup_then(
        optimizer, total_steps, min(warmup_steps, total_steps), lambda p: 1 - (1 - min_ratio) * p
    )
