"""A tiny Lightning training harness for probe and callback tests, with a recorder of what each
step saw, and the small seeded data and MLP several of them train on.

Imported as ``from harness import ...`` (tests/ is on ``sys.path`` through tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from optprobe.models.lit_module import TrainingModule
from optprobe.models.simple import MLP
from optprobe.run.run_store import MemoryLogger


class ArrayData(pl.LightningDataModule):
    """Fixed tensors served in a seeded order (``drop_last``), like the project's data modules."""

    def __init__(self, inputs: Tensor, targets: Tensor, batch_size: int, seed: int = 0):
        super().__init__()
        self.inputs, self.targets, self.batch_size, self.seed = inputs, targets, batch_size, seed
        self.num_classes = int(targets.max()) + 1
        self.task = "classification"

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        data = TensorDataset(self.inputs, self.targets)
        return DataLoader(
            data, batch_size=self.batch_size, shuffle=True, generator=gen, drop_last=True
        )


@dataclass
class StepRecord:
    """What optimizer step t saw: x_t, the raw g_t, the batch (all micro-batches), lr, x_{t+1}."""

    params: dict[str, Tensor]
    grads: dict[str, Tensor]
    batches: list[tuple[Tensor, Tensor]]
    lr: float
    next_params: dict[str, Tensor] | None = None


@dataclass
class Recorder(Callback):
    """Snapshots every optimizer step; register it *before* the probes."""

    steps: list[StepRecord] = field(default_factory=list)
    _pending: list = field(default_factory=list)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._pending.append(tuple(t.clone() for t in batch))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        named = [(n, p) for n, p in pl_module.net.named_parameters() if p.requires_grad]
        self.steps.append(
            StepRecord(
                params={n: p.detach().clone() for n, p in named},
                grads={n: p.grad.detach().clone() for n, p in named},
                batches=list(self._pending),
                lr=optimizer.param_groups[0]["lr"],
            )
        )
        self._pending = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.steps and self.steps[-1].next_params is None and not self._pending:
            named = [(n, p) for n, p in pl_module.net.named_parameters() if p.requires_grad]
            self.steps[-1].next_params = {n: p.detach().clone() for n, p in named}


def fit(
    net: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    callbacks: Sequence[Callback] = (),
    steps: int = 5,
    batch_size: int = 16,
    optimizer=None,
    scheduler=None,
    seed: int = 0,
    accumulate: int = 1,
    clip: float | None = None,
    precision: str = "32-true",
):
    """Train ``net`` for ``steps`` optimizer steps; returns (trainer, module, recorder, sink).

    ``optimizer`` is a factory ``params -> Optimizer`` (default SGD lr 0.1); ``precision`` is
    Lightning's (``bf16-mixed`` runs the training step under CPU autocast).
    """
    pl.seed_everything(seed, workers=True)
    recorder, sink = Recorder(), MemoryLogger()
    module = TrainingModule(
        net=net,
        optimizer=optimizer or (lambda params: torch.optim.SGD(params, lr=0.1)),
        scheduler=scheduler,
        num_classes=int(targets.max()) + 1 if targets.dim() == 1 else net_vocab(net),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        max_epochs=-1,
        callbacks=[recorder, *callbacks],
        logger=sink,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=clip,
        precision=precision,
    )
    trainer.fit(module, datamodule=ArrayData(inputs, targets, batch_size, seed))
    return trainer, module, recorder, sink


def make_data(n: int = 64, seed: int = 0, dtype=torch.float64) -> tuple[Tensor, Tensor]:
    """``n`` random 1x4x4 float64 inputs with labels in {0, 1, 2}, seeded."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


def make_mlp() -> nn.Module:
    """A float64 tanh MLP for ``make_data`` (16 hidden units), seeded."""
    torch.manual_seed(0)
    return MLP((1, 4, 4), 3, hidden=(16,), activation="tanh").double()


def net_vocab(net: nn.Module) -> int:
    return net.tok_emb.num_embeddings


class StartedFlag(Callback):
    """Records whether training started (to check that an error came at setup, before it)."""

    def __init__(self):
        self.started = False

    def on_train_start(self, trainer, pl_module):
        self.started = True
