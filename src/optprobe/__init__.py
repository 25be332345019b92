"""optprobe: measure, during real training, the quantities convergence proofs assume.

The public API for your own training code (imported on first use, so ``import optprobe``
stays light):

- ``optprobe.lightning_probes(net=..., loss=...)``: the probes as callbacks for any
  ``pl.LightningModule`` (:mod:`optprobe.integration.lightning`);
- ``optprobe.LoopProbes(net, loss)``: the same probes in a plain PyTorch loop
  (:mod:`optprobe.integration.plain_loop`);
- ``optprobe.ProbeTarget``: which network and loss the probes measure
  (:mod:`optprobe.probes.target`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

_PUBLIC = {
    "lightning_probes": "optprobe.integration.lightning",
    "RunRecorder": "optprobe.integration.lightning",
    "LoopProbes": "optprobe.integration.plain_loop",
    "ProbeTarget": "optprobe.probes.target",
    "TrainingLossMismatch": "optprobe.probes.loss_check",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'optprobe' has no attribute {name!r}")
