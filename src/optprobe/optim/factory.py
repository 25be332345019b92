"""Build the configured optimizer for a network."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], net: nn.Module):
    """``factory(net)`` when the optimizer class splits parameters by module type (class
    attribute ``splits_by_module``, e.g. ``optprobe.optim.muon.MuonWithAdamW``), else
    ``factory(net.parameters())``. ``factory`` is a Hydra ``_partial_`` or any callable."""
    target = getattr(factory, "func", factory)
    return factory(net if getattr(target, "splits_by_module", False) else net.parameters())
