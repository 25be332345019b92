"""CIFAR-10 read directly from the official "python version" pickles.

Expected layout (what extracting ``cifar-10-python.tar.gz`` produces)::

    <data_dir>/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch

Each file is a pickle of a dict with ``b"data"`` (uint8, shape (N, 3072): the
red, green and blue 32x32 planes, each row-major) and ``b"labels"`` (N ints).
The files are parsed here instead of through ``torchvision.datasets.CIFAR10``,
which insists on matching MD5 sums and so rejects small test folders.

Note: pickles can run code when loaded; only point ``data_dir`` at CIFAR-10
files from a source you trust.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, get_worker_info

from optprobe.data.base import (
    LoadedData,
    TensorDataModule,
    derive_seed,
)
from optprobe.validate import check_bool, check_int

FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10.html"
#: Per-channel mean and standard deviation of the CIFAR-10 training images (pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 pickle: returns uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    with open(path, "rb") as fh:
        entry = pickle.load(fh, encoding="bytes")
    try:
        data = entry[b"data"]
        labels = entry[b"labels"]
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is not a CIFAR-10 python batch (expected a dict with b'data' and "
            f"b'labels'); re-extract cifar-10-python.tar.gz from {CIFAR10_URL}."
        ) from err
    images = np.asarray(data, dtype=np.uint8)
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: b'data' has shape {images.shape}, expected (N, 3072); is this the "
            f"CIFAR-10 python version?"
        )
    labels_arr = np.asarray(labels, dtype=np.int64)
    if labels_arr.shape != (images.shape[0],):
        raise ValueError(f"{path}: {images.shape[0]} images but {labels_arr.shape[0]} labels.")
    return images.reshape(-1, 3, 32, 32), labels_arr


class CIFAR10Dataset(Dataset):
    """uint8 CIFAR images -> normalized float32, optionally augmented per example.

    Augmentation (training only): pad 4 pixels of zeros (black, i.e. before
    normalization) on each side, take a random 32x32 crop, and flip
    horizontally with probability 1/2. The random numbers come from a private
    :class:`torch.Generator` seeded with ``seed``, never from the global RNG.

    Determinism: with ``num_workers=0`` the augmentations depend only on
    ``seed`` and the order of ``__getitem__`` calls (itself fixed by the
    loader's seeded sampler), so a run is exactly reproducible. Inside a
    DataLoader worker the generator is re-seeded from the worker's seed, which
    the DataLoader derives from its own (seeded) generator; runs are then
    reproducible for a fixed ``num_workers``, and workers do not repeat each
    other's augmentations.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        augment: bool = False,
        seed: int = 0,
        crop_padding: int = 4,
        mean: tuple[float, float, float] = CIFAR10_MEAN,
        std: tuple[float, float, float] = CIFAR10_STD,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        self.images = images
        self.labels = labels
        self.augment = augment
        self.crop_padding = crop_padding
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.seed = seed
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self._worker_seed: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        info = get_worker_info()
        if info is not None and self._worker_seed != info.seed:
            self._worker_seed = info.seed
            self.generator.manual_seed(derive_seed(self.seed, f"worker:{info.seed}"))
        pad = self.crop_padding
        _, height, width = image.shape
        if pad > 0:
            top, left = torch.randint(0, 2 * pad + 1, (2,), generator=self.generator).tolist()
            padded = F.pad(image, (pad, pad, pad, pad))
            image = padded[:, top : top + height, left : left + width]
        if bool(torch.rand((), generator=self.generator) < 0.5):
            image = image.flip(-1)
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].to(torch.float32).div_(255.0)
        if self.augment:
            image = self._augment(image)
        image = (image - self.mean) / self.std
        return image.contiguous(), self.labels[index]


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10: 50000 training images (data_batch_1..5), 10000 validation (test_batch).

    Batches are (B, 3, 32, 32) float32, normalized with the CIFAR-10 channel
    mean/std, and int64 labels. ``augment`` enables random crop (4-pixel zero
    padding) plus horizontal flip on training examples only, drawn from a
    generator seeded from ``seed`` (see :class:`CIFAR10Dataset`).

    Nothing is downloaded: ``__init__`` checks that
    ``<data_dir>/cifar-10-batches-py`` holds all six batch files and raises
    FileNotFoundError with instructions otherwise. ``train_inputs`` and
    ``val_inputs`` are kept as uint8 (N, 3, 32, 32) to save memory; the
    conversion happens per example in the dataset.
    """

    task = "classification"
    display_name = "cifar10"
    NUM_CLASSES = 10
    INPUT_SHAPE = (3, 32, 32)

    def __init__(
        self,
        data_dir: str | Path,
        augment: bool = True,
        crop_padding: int = 4,
        batch_size: int = 128,
        num_classes: int | None = None,
        input_shape: tuple[int, ...] | list[int] | None = None,
        **loader_args: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **loader_args)
        check_bool("data.augment", augment)
        self.augment = augment
        self.crop_padding = check_int("data.crop_padding", crop_padding, 0)
        self.set_meta(num_classes, input_shape)
        if data_dir is None or str(data_dir) == "":
            raise ValueError(
                "data_dir is empty: set data.data_dir (or paths.data_dir) to the folder that "
                f"contains {FOLDER_NAME}/."
            )
        self.data_dir = Path(str(data_dir)).expanduser()
        self.folder = self.data_dir / FOLDER_NAME
        self._check_files()

    def _check_files(self) -> None:
        folder = self.folder
        if not folder.is_dir():
            hint = ""
            if (self.data_dir / "data_batch_1").is_file():
                hint = (
                    f" {self.data_dir} itself holds the batch files: set data_dir to its parent "
                    f"folder {self.data_dir.parent}."
                )
            elif (self.data_dir / "cifar-10-python.tar.gz").is_file():
                hint = (
                    f" The archive is there but not extracted: run "
                    f"`tar -xzf {self.data_dir / 'cifar-10-python.tar.gz'} -C {self.data_dir}`."
                )
            raise FileNotFoundError(
                f"CIFAR-10 folder not found: {folder}.{hint} Download cifar-10-python.tar.gz "
                f"(the python version) from {CIFAR10_URL} and extract it into {self.data_dir} "
                f"so that {FOLDER_NAME}/ is inside it, or point the config elsewhere with "
                f"paths.data_dir=... or data.data_dir=... . Nothing is downloaded automatically."
            )
        missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"CIFAR-10 folder {folder} is incomplete; missing: {', '.join(missing)}. "
                f"Re-extract cifar-10-python.tar.gz from {CIFAR10_URL} into {self.data_dir}, "
                f"or point data.data_dir (paths.data_dir) at a complete copy."
            )

    def _load(self) -> LoadedData:
        self._check_files()
        train = [read_cifar_batch(self.folder / name) for name in TRAIN_FILES]
        val_images, val_labels = read_cifar_batch(self.folder / TEST_FILE)
        train_images = np.concatenate([images for images, _ in train])
        train_labels = np.concatenate([labels for _, labels in train])
        return LoadedData(
            torch.from_numpy(train_images),
            torch.from_numpy(train_labels),
            torch.from_numpy(val_images),
            torch.from_numpy(val_labels),
            num_classes=self.NUM_CLASSES,
            input_shape=tuple(train_images.shape[1:]),
        )

    def _make_dataset(self, inputs: torch.Tensor, targets: torch.Tensor, train: bool) -> Dataset:
        return CIFAR10Dataset(
            inputs,
            targets,
            augment=self.augment and train,
            seed=derive_seed(self.seed, "augment"),
            crop_padding=self.crop_padding,
        )
