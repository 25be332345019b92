"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes); no download needed."""

from __future__ import annotations

import torch

from optprobe.data.base import (
    LoadedData,
    TensorDataModule,
    as_shape,
    check_fraction,
    check_optional_int,
    split_by_permutation,
)


class DigitsDataModule(TensorDataModule):
    """``sklearn.datasets.load_digits`` as (N, 1, 8, 8) float32 in [0, 1] with int64 labels.

    The train/val split is a random permutation seeded from ``seed``; the last
    ``val_fraction`` of it (rounded) is the validation set.

    ``num_classes`` and ``input_shape`` may be given by the config; they are
    checked against the data in :meth:`setup` (10 and (1, 8, 8)).
    """

    task = "classification"
    display_name = "digits"
    NUM_CLASSES = 10
    INPUT_SHAPE = (1, 8, 8)

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

    def _load(self) -> LoadedData:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
        labels = torch.as_tensor(bunch.target, dtype=torch.int64)
        x_tr, y_tr, x_va, y_va = split_by_permutation(images, labels, self.val_fraction, self.seed)
        return LoadedData(
            x_tr.contiguous(),
            y_tr,
            x_va.contiguous(),
            y_va,
            num_classes=len(bunch.target_names),
            input_shape=tuple(images.shape[1:]),
        )
