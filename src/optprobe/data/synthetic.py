"""Seeded synthetic classification data, learnable by a linear model."""

from __future__ import annotations

import math
from typing import Any

import torch

from optprobe.data.base import (
    LoadedData,
    TensorDataModule,
    as_shape,
    check_fraction,
    seeded_generator,
)
from optprobe.validate import check_int, check_number


class SyntheticDataModule(TensorDataModule):
    """Gaussian inputs labelled by a random linear teacher (plus logit noise).

    ``x ~ N(0, I)`` with shape ``input_shape``; the teacher's weights ``W`` are
    ``N(0, 1/D)`` (``D`` = number of input features), and the label is
    ``argmax(x.flatten() @ W + noise * eps)`` with ``eps ~ N(0, I)``. With
    small ``noise`` a logistic regression can fit it almost perfectly.
    Everything is drawn from a generator seeded from ``seed``, so the data is
    a deterministic function of the constructor arguments. The last
    ``val_fraction`` of the ``num_samples`` examples (i.i.d.) is the validation
    set.

    Unlike the real data sets, ``num_classes`` and ``input_shape`` here define
    the data rather than being checked against it.
    """

    task = "classification"
    display_name = "synthetic"

    def __init__(
        self,
        num_samples: int = 512,
        input_shape: tuple[int, ...] | list[int] = (1, 8, 8),
        num_classes: int = 10,
        noise: float = 0.1,
        val_fraction: float = 0.2,
        batch_size: int = 64,
        **loader_args: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **loader_args)
        self.num_samples = check_int("data.num_samples", num_samples, 2)
        shape = as_shape("data.input_shape", input_shape)
        if shape is None:
            raise ValueError("input_shape must be given, e.g. input_shape=[1, 8, 8].")
        self.input_shape = shape
        self.num_classes = check_int("data.num_classes", num_classes, 2)
        self.noise = check_number("data.noise", noise, low=0)
        self.val_fraction = check_fraction("data.val_fraction", val_fraction)

    def _load(self) -> LoadedData:
        generator = seeded_generator(self.seed, "synthetic")
        features = math.prod(self.input_shape)
        inputs = torch.randn((self.num_samples, *self.input_shape), generator=generator)
        teacher = torch.randn((features, self.num_classes), generator=generator)
        teacher /= math.sqrt(features)
        logits = inputs.reshape(self.num_samples, features) @ teacher
        logits += self.noise * torch.randn(logits.shape, generator=generator)
        targets = logits.argmax(dim=1).to(torch.int64)
        n_val = min(max(int(round(self.num_samples * self.val_fraction)), 1), self.num_samples - 1)
        n_train = self.num_samples - n_val
        return LoadedData(
            inputs[:n_train],
            targets[:n_train],
            inputs[n_train:],
            targets[n_train:],
            num_classes=self.num_classes,
            input_shape=self.input_shape,
        )
