"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes); no download needed."""

from __future__ import annotations

import torch

from optprobe.data.base import PermutationSplitDataModule


class DigitsDataModule(PermutationSplitDataModule):
    """``sklearn.datasets.load_digits`` as (N, 1, 8, 8) float32 in [0, 1] with int64 labels.

    The train/val split is a random permutation seeded from ``seed``; the last
    ``val_fraction`` of it (rounded) is the validation set. ``num_classes`` and
    ``input_shape`` from the config are checked against the data (10, (1, 8, 8)).
    """

    task = "classification"
    display_name = "digits"
    NUM_CLASSES = 10
    INPUT_SHAPE = (1, 8, 8)

    def load_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
        return images, torch.as_tensor(bunch.target, dtype=torch.int64)
