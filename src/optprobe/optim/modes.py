"""Schedule-Free optimizers' train/eval modes.

Schedule-Free (``schedulefree``) keeps two points: the gradient point ``y`` the steps are
taken at and the averaged point ``x`` it returns. ``optimizer.train()`` puts ``y`` into the
parameters, ``optimizer.eval()`` puts ``x``; a step refuses to run in eval mode. The training
module switches to eval for validation and at the end of fit, and to train before training and
after each validation. ``optimizer.train()`` recomputes ``y`` from ``x`` and the state, which is
not bit-exact in floating point; :class:`ModeSwitch` instead restores the ``y`` it saved when it
switched to eval, so validating (at any cadence) leaves the trajectory bit-identical.
Checkpoints are not switched (that would need the inexact recomputation on resume): they hold
``y`` with the mode flag.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from optprobe.optim.registry import torch_optimizer


def has_modes(optimizer: Any) -> bool:
    """Whether ``optimizer`` (or the torch optimizer behind Lightning's wrapper) has
    Schedule-Free train/eval modes (a ``train_mode`` flag in its parameter groups)."""
    groups = torch_optimizer(optimizer).param_groups
    return bool(groups) and "train_mode" in groups[0]


def set_mode(optimizer: Any, train: bool) -> None:
    """``optimizer.train()`` or ``optimizer.eval()`` for a Schedule-Free optimizer; nothing for
    any other optimizer."""
    optimizer = torch_optimizer(optimizer)
    if has_modes(optimizer):
        optimizer.train() if train else optimizer.eval()


class ModeSwitch:
    """Eval/train switching that restores the training point exactly (module docstring)."""

    def __init__(self) -> None:
        self.saved: list[Tensor] | None = None  # y, while the optimizer is in eval mode

    def to_eval(self, optimizer: Any) -> None:
        """Save y, then put the averaged point x into the parameters."""
        optimizer = torch_optimizer(optimizer)
        if not has_modes(optimizer) or not optimizer.param_groups[0]["train_mode"]:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.saved = [p.detach().clone() for p in params]
        optimizer.eval()

    @torch.no_grad()
    def to_train(self, optimizer: Any) -> None:
        """Put back the saved y (bit-exact) or, without one, ``optimizer.train()``."""
        optimizer = torch_optimizer(optimizer)
        if not has_modes(optimizer) or optimizer.param_groups[0]["train_mode"]:
            return
        if self.saved is None:
            optimizer.train()
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for p, y in zip(params, self.saved):
            p.copy_(y)
        for group in optimizer.param_groups:
            group["train_mode"] = True
        self.saved = None
