"""Data modules with small test settings, and helpers shared by the tests in tests/data/.

Imported as ``from data_factories import ...`` (pytest puts a test file's folder on
``sys.path``)."""

from __future__ import annotations

import torch

from optprobe.data import (
    DigitsDataModule,
    MNIST5kDataModule,
    ShakespeareDataModule,
    SyntheticDataModule,
    TensorDataModule,
)


def make_digits(**kw) -> DigitsDataModule:
    return DigitsDataModule(**{"batch_size": 32, **kw})


def make_mnist(**kw) -> MNIST5kDataModule:
    return MNIST5kDataModule(**{"batch_size": 32, **kw})


def make_shakespeare(**kw) -> ShakespeareDataModule:
    return ShakespeareDataModule(**{"batch_size": 8, "seq_len": 32, "max_chars": 20000, **kw})


def make_synthetic(**kw) -> SyntheticDataModule:
    return SyntheticDataModule(**{"batch_size": 32, **kw})


FACTORIES = {
    "digits": make_digits,
    "mnist5k": make_mnist,
    "shakespeare": make_shakespeare,
    "synthetic": make_synthetic,
}


def first_batch(dm: TensorDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def perturb_global_rng() -> None:
    torch.manual_seed(12345)
    torch.rand(1000)
    torch.randperm(97)
