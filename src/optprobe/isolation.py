"""Run extra passes without side effects: train/eval modes and RNG streams put back after."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def preserved_modes(net: nn.Module) -> Iterator[None]:
    """Put every module's train/eval mode back as it was on exit."""
    modes = [(m, m.training) for m in net.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Put the torch (CPU and CUDA), numpy and Python RNG states back as they were on exit."""
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(np_state)
        random.setstate(py_state)


def has_active_dropout(net: nn.Module) -> bool:
    """True when some dropout layer with p > 0 is in training mode."""
    return any(
        isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 and m.training
        for m in net.modules()
    )


@contextlib.contextmanager
def isolated(net: nn.Module, dropout_off: bool = True) -> Iterator[None]:
    """Run a probe pass without side effects on RNG streams and modes.

    Dropout layers are put in eval mode inside (``dropout_off``), so probe passes are
    deterministic. Buffers are protected separately by functional calls with cloned buffers
    (``optprobe.estimators.functional``).
    """
    with preserved_rng(), preserved_modes(net):
        if dropout_off:
            for m in net.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.eval()
        yield
