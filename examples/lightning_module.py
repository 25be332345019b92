"""optprobe on your own LightningModule: add ``callbacks=lightning_probes(...)`` to the Trainer.

A small MLP on scikit-learn's digits (bundled, offline), with dict batches from its own
Dataset, AdamW's weight decay, gradient clipping and gradient accumulation, is trained twice
(SGD, then AdamW) with the step, curvature and noise probes. Each run writes a job folder
(``<out>/<optimizer>/version_<n>/optprobe``: metrics.csv, config.yaml, summary.json,
verdicts.json) beside Lightning's CSV logs; the analysis then compares the runs in
``<out>/report/report.html``.

The probes' loss is ``loss(net, batch)``: the loss ``training_step`` backpropagates. optprobe
checks this on the first step: ``--penalty 0.01`` adds an L2 penalty to ``training_step`` only,
and the fit stops with a ``TrainingLossMismatch`` (its job folder is kept, marked failed).

Run:  python examples/lightning_module.py [--out logs/examples/lightning_module] [--steps 30]
"""

import argparse

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset

from optprobe.cli import analyze
from optprobe.integration.lightning import lightning_probes

PROBES = {
    "step": {},
    "curvature": {"every_n_steps": 5, "lanczos_iters": 20},
    "noise": {"every_n_steps": 5},
}


class Digits(Dataset):
    """The 1797 8x8 digits of scikit-learn, as ``{"pixels": (64,), "label": ()}``."""

    def __init__(self):
        pixels, labels = load_digits(return_X_y=True)
        self.pixels = torch.tensor(pixels / 16, dtype=torch.float32)
        self.labels = torch.tensor(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixels": self.pixels[i], "label": self.labels[i]}


class DigitsClassifier(pl.LightningModule):
    def __init__(self, optimizer: str, penalty: float = 0.0):
        super().__init__()
        self.optimizer, self.penalty = optimizer, penalty
        self.model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self.model(batch["pixels"]), batch["label"])
        if self.penalty:  # a term that digits_loss lacks: the probes' loss check stops the fit
            loss = loss + self.penalty * sum(p.square().sum() for p in self.model.parameters())
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):  # weight decay in AdamW's update, not in the loss
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.01)


def digits_loss(net, batch):
    """What training_step backpropagates, of the network it is given (the probes move it)."""
    return F.cross_entropy(net(batch["pixels"]), batch["label"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="logs/examples/lightning_module")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--penalty", type=float, default=0.0, help="L2 in training_step only")
    args = parser.parse_args(argv)
    for optimizer in ("sgd", "adamw"):  # the same initial weights and batches for both
        pl.seed_everything(0)
        trainer = pl.Trainer(
            max_steps=args.steps,
            accumulate_grad_batches=2,  # an optimizer step = 2 micro-batches of 32
            gradient_clip_val=1.0,
            logger=CSVLogger(save_dir=args.out, name=optimizer),
            callbacks=lightning_probes(net="model", loss=digits_loss, probes=PROBES),
            log_every_n_steps=1,
            enable_progress_bar=False,
        )
        loader = DataLoader(Digits(), batch_size=32, shuffle=True, drop_last=True)
        trainer.fit(DigitsClassifier(optimizer, args.penalty), loader)
    return analyze.main([args.out])  # writes <out>/report/ (report.html, verdicts.csv, ...)


if __name__ == "__main__":
    raise SystemExit(main())
