"""Logistic regression (the convex sanity case) and a multilayer perceptron."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class LogisticRegression(nn.Module):
    """One linear layer on flattened inputs: with cross-entropy the loss is convex."""

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """Fully connected network on flattened inputs with ``hidden`` widths and one activation."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"model.activation={activation!r} is unknown; use one of {sorted(_ACTIVATIONS)}"
            )
        widths = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))


class SmallCNN(nn.Module):
    """Two 3x3 conv + ReLU + 2x2 max-pool stages, then a linear classifier (no BatchNorm).

    A BatchNorm-free CNN: per-example gradients and forward-mode AD work on it, and peer
    tools that reject BatchNorm (e.g. BackPACK-based ones) can run on it too.
    """

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32)
    ) -> None:
        super().__init__()
        in_ch, height, width = (int(d) for d in input_shape)
        layers: list[nn.Module] = []
        for out_ch in channels:
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            in_ch, height, width = out_ch, height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(
                f"model.channels={list(channels)} pools {tuple(input_shape)} below 1x1; "
                "use fewer stages for such small inputs"
            )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch * height * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
