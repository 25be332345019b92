"""Schedule-Free optimizers' train/eval modes.

Schedule-Free (``schedulefree``) keeps two points: the gradient point ``y`` the steps are
taken at and the averaged point ``x`` it returns. ``optimizer.train()`` puts ``y`` into the
parameters, ``optimizer.eval()`` puts ``x``; a step refuses to run in eval mode. The training
module calls :func:`set_mode` with ``train=False`` for validation and at the end of fit, and
``train=True`` before training and after each validation. Checkpoints are not switched: the
round trip ``eval(); train()`` is not bit-exact in floating point, so switching there would make
the trajectory depend on the checkpoint cadence; the mode flag is saved with the weights.
"""

from __future__ import annotations

from typing import Any


def has_modes(optimizer: Any) -> bool:
    """Whether ``optimizer`` (or the torch optimizer behind Lightning's wrapper) has
    Schedule-Free train/eval modes (a ``train_mode`` flag in its parameter groups)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    return bool(optimizer.param_groups) and "train_mode" in optimizer.param_groups[0]


def set_mode(optimizer: Any, train: bool) -> None:
    """Put the training point (``train=True``) or the averaged point into the parameters of a
    Schedule-Free optimizer; nothing for any other optimizer."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    if has_modes(optimizer):
        optimizer.train() if train else optimizer.eval()
