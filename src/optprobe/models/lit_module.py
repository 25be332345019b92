"""The LightningModule that trains any network with an injected optimizer and schedule."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from optprobe.optim.factory import build_optimizer
from optprobe.optim.modes import ModeSwitch

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy (nats) over examples, or over all tokens for (B, T, V) logits."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


class TrainingModule(pl.LightningModule):
    """Minimizes the cross-entropy of ``net``; logs ``train/loss``, ``train/lr``, ``val/*``.

    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_: true``), so swapping the
    optimizer on the command line needs no change to the model config. The scheduler factory
    receives the optimizer and the total number of optimizer steps and is stepped every step.
    Probes read ``net`` and ``probe_loss`` (the default :class:`~optprobe.probes.target.ProbeTarget`)
    to evaluate the same loss at other parameters.

    An optimizer class with ``splits_by_module = True`` (``optprobe.optim.muon``) is built from
    ``net`` itself, any other from its parameters. Schedule-Free optimizers are put in train
    mode for training (probes see the gradient point y) and in eval mode (the averaged point x)
    for validation and after fit (``optprobe.optim.modes``).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        num_classes: int = 10,
        task: str = "classification",
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.task = task
        self.loss_fn = cross_entropy
        self.run_config: dict | None = None  # saved in checkpoints to check resumes
        self.modes = ModeSwitch()
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def probe_loss(self, net: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The loss ``training_step`` backpropagates, of ``net`` on an ``(inputs, targets)``
        batch (mean cross-entropy, nats): what the probes evaluate at other parameters."""
        inputs, targets = batch
        return self.loss_fn(net(inputs), targets)

    def _shared_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        inputs, targets = batch
        logits = self.net(inputs)
        return self.loss_fn(logits, targets), logits, targets

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits, targets = self._shared_step(batch)
        self.train_acc(logits.reshape(-1, logits.shape[-1]).detach(), targets.reshape(-1))
        # sync_dist: under DDP the loss of the global batch (a mean over ranks), as probes see it
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logits, targets = self._shared_step(batch)
        self.val_acc(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.task == "lm" and "val/loss" in self.trainer.callback_metrics:
            self.log("val/ppl", torch.exp(self.trainer.callback_metrics["val/loss"]))

    def on_train_start(self) -> None:
        self.modes.to_train(self.optimizers())

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == "fit":
            self.modes.to_eval(self.optimizers())

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "fit":
            self.modes.to_train(self.optimizers())

    def on_train_end(self) -> None:
        self.modes.to_eval(self.optimizers())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint["optprobe_config"] = self.run_config

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_factory, self.net)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
