"""Data modules (pytorch_lightning ``LightningDataModule``) for optprobe experiments.

All keep their splits in memory, shuffle with a private generator seeded from
``seed`` and expose ``task``, ``num_classes`` and ``input_shape``.
"""

from optprobe.data.base import TensorDataModule
from optprobe.data.cifar10 import CIFAR10DataModule
from optprobe.data.digits import DigitsDataModule
from optprobe.data.mnist5k import MNIST5kDataModule
from optprobe.data.shakespeare import ShakespeareDataModule
from optprobe.data.synthetic import SyntheticDataModule

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "MNIST5kDataModule",
    "ShakespeareDataModule",
    "SyntheticDataModule",
    "TensorDataModule",
]
