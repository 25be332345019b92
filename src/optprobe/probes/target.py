"""What probes measure in a training module: which network, and its training loss on a batch.

optprobe's own :class:`~optprobe.models.lit_module.TrainingModule` is read with the default
target (its ``net`` and its ``probe_loss``). Any other LightningModule, or a plain training
loop, names them (:class:`ProbeTarget`): the probes then evaluate ``loss(net, batch)`` at other
parameter points, on the batches the training step saw, and check on the first probed step
that it equals the loss the step backpropagated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from optprobe.estimators.functional import BatchLoss

NetSpec = str | Callable[[Any], nn.Module]
LossSpec = str | BatchLoss


@dataclass(frozen=True)
class ProbedModel:
    """The network whose trainable parameters the probes perturb, and ``loss(net, batch)``:
    the training objective on a batch (nats; a scalar, the mean over the batch's examples),
    computed by calling the network it is given."""

    net: nn.Module
    loss: BatchLoss


@dataclass(frozen=True)
class ProbeTarget:
    """How to find the probed network and loss on a training module.

    Args:
        net: the attribute of the module holding the network (``"model"``), or a function of
            the module returning it.
        loss: ``loss(net, batch) -> scalar`` (the batch exactly as the training step receives
            it: a tuple, a dict, a Hugging Face batch), or the name of a method of the module
            with that signature. It must be the loss the training step backpropagates,
            penalties included.
    """

    net: NetSpec = "net"
    loss: LossSpec = "probe_loss"

    def resolve(self, module: Any, owner: str = "probes") -> ProbedModel:
        """The network and loss on ``module``; a TypeError naming what is missing and how to
        name it (``owner``: who asks, for the message)."""
        net = self._net(module, owner)
        loss = self.loss
        if isinstance(loss, str):
            loss = getattr(module, loss, None)
            if not callable(loss):
                raise TypeError(
                    f"{owner}: {type(module).__name__} has no method `{self.loss}(net, batch)`; "
                    "pass the training loss as ProbeTarget(loss=lambda net, batch: ...) "
                    "(optprobe.lightning_probes(loss=...))"
                )
        return ProbedModel(net=net, loss=loss)

    def _net(self, module: Any, owner: str) -> nn.Module:
        if isinstance(self.net, str):
            net = getattr(module, self.net, None)
            where = f"attribute `{self.net}`"
        else:
            net = self.net(module)
            where = "net=<function>"
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"{owner}: {where} of {type(module).__name__} is {type(net).__name__}, not a "
                "torch.nn.Module; name the network the training step calls, e.g. "
                "ProbeTarget(net='model') (optprobe.lightning_probes(net='model'))"
            )
        if not any(p.requires_grad for p in net.parameters()):
            raise TypeError(f"{owner}: the network at {where} has no trainable parameter")
        return net
