"""Common machinery for the in-memory data modules.

Every data module in :mod:`optprobe.data` keeps its whole train and validation
split as tensors in memory (the data sets are small, or capped for CPU-scale
runs with ``max_train_samples``).  :class:`TensorDataModule` implements the
parts they share:

* argument validation in ``__init__`` (errors name the argument and the fix),
* loading once in :meth:`setup` (later calls are no-ops),
* verification of the ``num_classes`` / ``input_shape`` values given in the
  config against what the data actually has,
* data loaders whose shuffling uses a private :class:`torch.Generator` seeded
  from ``seed``.  The order of the training examples therefore depends only on
  ``seed``: code that consumes the global torch RNG (model initialisation,
  dropout, probes drawing random directions) cannot change it.

Subclasses set the attributes ``task`` (``"classification"`` or ``"lm"``),
``num_classes`` (classes, or vocabulary size for ``"lm"``) and ``input_shape``
(``(C, H, W)`` for images, ``(T,)`` for token sequences) in ``__init__`` and
implement :meth:`TensorDataModule._load`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from optprobe.validate import check_bool, check_int, check_number, check_optional_int, is_int

TASKS = ("classification", "lm")


def derive_seed(seed: int, purpose: str) -> int:
    """Deterministically derive an independent 63-bit seed for ``purpose``.

    Used so that e.g. the train/val split, the shuffling order and the data
    augmentation of one data module draw from unrelated random streams while
    all depending only on the single ``seed`` argument.  Does not use Python's
    salted ``hash``, so the result is the same in every process.
    """
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded_generator(seed: int, purpose: str) -> torch.Generator:
    """A fresh CPU :class:`torch.Generator` seeded with ``derive_seed(seed, purpose)``."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, purpose))
    return generator


class EpochShuffleSampler(DistributedSampler):
    """A random permutation per epoch, determined by (seed, epoch) only, sharded over DDP ranks.

    Unlike ``shuffle=True`` with a generator, the order of an epoch does not depend on how
    many epochs this sampler already produced, so resuming from a checkpoint reproduces it.
    Under DDP (a process group is up when the loader is made) rank ``r`` of ``W`` takes the
    positions ``r, r + W, ...`` of the permutation (padded with its first entries to a
    multiple of ``W``), so the ranks' batches of a step together are exactly the batch a
    single process with ``W`` times the batch size would see. Being a ``DistributedSampler``,
    Lightning does not wrap it in another one.
    """

    def __init__(self, num_examples: int, seed: int) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            range(num_examples),
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=False,
        )
        self.num_examples, self.seed = num_examples, seed
        self.skip_examples = 0  # set by ResumableDataLoader for one iteration (all ranks')

    def __iter__(self):
        gen = seeded_generator(self.seed, f"shuffle:epoch{self.epoch}")
        order = torch.randperm(self.num_examples, generator=gen)
        pad = self.total_size - self.num_examples
        if pad:
            order = torch.cat([order, order[:pad]])
        skip, self.skip_examples = self.skip_examples, 0
        return iter(order[skip:][self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A DataLoader whose state is the number of batches it yielded in the current epoch.

    A run resumed from a mid-epoch checkpoint continues with the next batch of the same epoch
    order instead of starting the epoch over, so it follows the uninterrupted trajectory. The
    position reaches the loader on two paths (``TensorDataModule.load_state_dict``, which
    Lightning always calls, and Lightning's own loader state, which its fit loop restores only
    in some cases); ``load_state_dict`` sets the position, so applying it twice skips once.
    A position at the end of an epoch (checkpoint after its last batch) starts the next
    epoch from its first batch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._resume_at = 0

    def __iter__(self):
        skip, self._resume_at = self._resume_at, 0
        if skip >= len(self):
            skip = 0  # the epoch was finished: Lightning has moved on to the next one
        if skip and isinstance(self.sampler, EpochShuffleSampler):
            self.sampler.skip_examples = skip * self.batch_size * self.sampler.num_replicas
        self._yielded = skip
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_yielded": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Start the next iteration at batch ``batches_yielded`` of the epoch (idempotent)."""
        self._resume_at = int(state["batches_yielded"])


def check_fraction(name: str, value: object) -> float:
    """``value`` as a float strictly between 0 and 1 (a split fraction), or a ValueError."""
    return check_number(name, value, low=0, high=1, low_open=True, high_open=True, example=0.2)


def as_shape(name: str, value: object) -> tuple[int, ...] | None:
    """Convert a list/tuple/ListConfig of positive ints to a tuple (``None`` stays ``None``)."""
    if value is None:
        return None
    items = None
    if not isinstance(value, (str, bytes, Mapping)):
        try:
            items = list(value)  # type: ignore[call-overload]
        except TypeError:
            items = None
    if not items or not all(is_int(v) and int(v) >= 1 for v in items):
        raise ValueError(
            f"{name} must be a non-empty list of positive integers such as [1, 8, 8], "
            f"got {value!r}: fix {name} in the data config (or remove it)."
        )
    return tuple(int(v) for v in items)


@dataclass(frozen=True)
class LoadedData:
    """What :meth:`TensorDataModule._load` returns.

    ``num_classes`` and ``input_shape`` describe the data itself (not the
    config); they are compared with the configured values in ``setup``.
    Inputs may be stored in a compact dtype (e.g. ``uint8`` images) when the
    subclass converts them in its own dataset (see ``_make_dataset``).
    """

    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    val_inputs: torch.Tensor
    val_targets: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]


class TensorDataModule(pl.LightningDataModule):
    """Base class: in-memory train/val tensors, seeded shuffling, config checks.

    Args:
        batch_size: training batch size (>= 1).
        val_batch_size: validation batch size; ``None`` means ``batch_size``.
        seed: seeds everything random in the data (split, shuffling order,
            augmentation, synthetic data) through private generators.
        num_workers: DataLoader worker processes (0 = load in the main process).
        drop_last: drop the last incomplete training batch (keeps every step's
            batch size equal, which the noise probes assume).
        max_train_samples: keep only the first this-many training examples
            (after the seeded split), for CPU-scale runs. ``None`` keeps all.
        pin_memory: passed to the DataLoaders.

    After :meth:`setup` the tensors are available as ``train_inputs``,
    ``train_targets``, ``val_inputs`` and ``val_targets``.
    """

    #: ``"classification"`` or ``"lm"``; subclasses override.
    task: str = "classification"
    #: Human-readable name used by :meth:`describe`.
    display_name: str = "TensorDataModule"

    def __init__(
        self,
        batch_size: int,
        val_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = True,
        max_train_samples: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = check_int("data.batch_size", batch_size, 1)
        self.val_batch_size = check_optional_int(
            "data.val_batch_size",
            val_batch_size,
            1,
            hint="Or leave it unset (null) to use batch_size.",
        )
        self.seed = check_int("data.seed", seed, 0)
        if self.seed >= 2**63:
            raise ValueError(f"seed must be < 2**63, got {seed!r}: pick a smaller data.seed.")
        self.num_workers = check_int("data.num_workers", num_workers, 0)
        self.drop_last = check_bool("data.drop_last", drop_last)
        self.max_train_samples = check_optional_int(
            "data.max_train_samples",
            max_train_samples,
            1,
            hint="Or leave it unset (null) to use the whole training set.",
        )
        self.pin_memory = check_bool("data.pin_memory", pin_memory)

        # Subclasses overwrite these in their __init__.
        self.num_classes: int = 0
        self.input_shape: tuple[int, ...] = ()

        self.train_inputs: torch.Tensor | None = None
        self.train_targets: torch.Tensor | None = None
        self.val_inputs: torch.Tensor | None = None
        self.val_targets: torch.Tensor | None = None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self._is_set_up = False
        # a checkpoint's loader position, for the training loader Lightning asks for next
        self._resume_position: dict[str, int] | None = None

    #: Class defaults for ``num_classes`` / ``input_shape`` when the config gives none.
    NUM_CLASSES: int = 0
    INPUT_SHAPE: tuple[int, ...] = ()

    def set_meta(
        self, num_classes: int | None, input_shape: tuple[int, ...] | list[int] | None
    ) -> None:
        """Take ``num_classes``/``input_shape`` from the config (verified against the data in
        ``setup``) or, when null, from the class defaults."""
        configured_classes = check_optional_int("data.num_classes", num_classes, 1)
        configured_shape = as_shape("data.input_shape", input_shape)
        self.num_classes = self.NUM_CLASSES if configured_classes is None else configured_classes
        self.input_shape = self.INPUT_SHAPE if configured_shape is None else configured_shape

    # ------------------------------------------------------------------ hooks
    def _load(self) -> LoadedData:
        """Load (or generate) the full train/val split. Called once by ``setup``."""
        raise NotImplementedError

    def _make_dataset(self, inputs: torch.Tensor, targets: torch.Tensor, train: bool) -> Dataset:
        """Wrap tensors in a Dataset; override to convert/augment per example."""
        return TensorDataset(inputs, targets)

    def _check_against_config(self, data: LoadedData) -> None:
        """Raise ValueError if the configured num_classes/input_shape disagree with the data.

        Subclasses whose config keys are named differently (``vocab_size``)
        override this or reuse :meth:`_mismatch`.
        """
        if self.num_classes != data.num_classes:
            raise self._mismatch("num_classes", self.num_classes, data.num_classes)
        if tuple(self.input_shape) != tuple(data.input_shape):
            raise self._mismatch("input_shape", self.input_shape, data.input_shape)

    def _mismatch(self, key: str, configured: object, actual: object) -> ValueError:
        if isinstance(actual, tuple):
            actual_str = "[" + ", ".join(str(v) for v in actual) + "]"
            configured_str = "[" + ", ".join(str(v) for v in configured) + "]"  # type: ignore[union-attr]
        else:
            actual_str, configured_str = str(actual), str(configured)
        return ValueError(
            f"{self.display_name}: the config says {key}={configured_str} but the data has "
            f"{key}={actual_str}. Change data.{key} to {actual_str} (or remove it from the "
            f"data config so the value is taken from the data), and make sure the model's "
            f"matching setting follows it."
        )

    # -------------------------------------------------------------- lifecycle
    def setup(self, stage: str | None = None) -> None:
        """Load the data once; later calls (any ``stage``) do nothing."""
        if self._is_set_up:
            return
        data = self._load()
        self._check_against_config(data)
        self._check_tensors(data)

        train_inputs, train_targets = data.train_inputs, data.train_targets
        if self.max_train_samples is not None and self.max_train_samples < len(train_targets):
            train_inputs = train_inputs[: self.max_train_samples]
            train_targets = train_targets[: self.max_train_samples]
        if self.drop_last and len(train_targets) < self.batch_size:
            raise ValueError(
                f"{self.display_name}: batch_size={self.batch_size} is larger than the "
                f"{len(train_targets)} training examples, so with drop_last=true there would be "
                f"no training batch at all. Lower data.batch_size, raise "
                f"data.max_train_samples, or set data.drop_last=false."
            )

        self.train_inputs, self.train_targets = train_inputs, train_targets
        self.val_inputs, self.val_targets = data.val_inputs, data.val_targets
        self.train_dataset = self._make_dataset(train_inputs, train_targets, train=True)
        self.val_dataset = self._make_dataset(data.val_inputs, data.val_targets, train=False)
        self._is_set_up = True

    def _check_tensors(self, data: LoadedData) -> None:
        for split, inputs, targets in (
            ("train", data.train_inputs, data.train_targets),
            ("val", data.val_inputs, data.val_targets),
        ):
            if len(inputs) != len(targets):
                raise RuntimeError(
                    f"{self.display_name}: {split} has {len(inputs)} inputs but "
                    f"{len(targets)} targets."
                )
            if len(targets) == 0:
                raise ValueError(
                    f"{self.display_name}: the {split} split is empty; use more data or "
                    f"change the split fraction."
                )
            if targets.numel() and (
                int(targets.min()) < 0 or int(targets.max()) >= data.num_classes
            ):
                raise RuntimeError(
                    f"{self.display_name}: {split} targets span "
                    f"[{int(targets.min())}, {int(targets.max())}], outside "
                    f"[0, {data.num_classes - 1}]; the data files look corrupted."
                )

    def _require_setup(self) -> None:
        if not self._is_set_up:
            raise RuntimeError(
                f"{self.display_name}: call setup() before asking for data loaders "
                f"(the Lightning Trainer does this for you)."
            )

    # ------------------------------------------------------------ dataloaders
    def train_dataloader(self) -> DataLoader:
        """Shuffled training loader.

        The order of epoch e is a permutation drawn from a generator seeded by
        (``seed``, e) alone (Lightning calls ``set_epoch``), so a run resumed at an
        epoch boundary sees the same order as an uninterrupted one; augmenting
        modules also get a freshly seeded augmentation stream per call.
        """
        self._require_setup()
        assert self.train_inputs is not None and self.train_targets is not None
        dataset = self._make_dataset(self.train_inputs, self.train_targets, train=True)
        self.train_dataset = dataset
        loader = ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed),
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )
        if self._resume_position is not None:
            loader.load_state_dict(self._resume_position)
            self._resume_position = None
        return loader

    # ------------------------------------------------------------ resume position
    def _fit_loader(self) -> ResumableDataLoader | None:
        """The training loader Lightning iterates now (None before it asked for one)."""
        loader = getattr(self.trainer, "train_dataloader", None) if self.trainer else None
        return loader if isinstance(loader, ResumableDataLoader) else None

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position in its epoch (Lightning saves it in checkpoints)."""
        loader = self._fit_loader()
        return {"train_loader": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training loader at the saved position.

        Lightning restores the data module on every resume, but its fit loop may already have
        made the loader (``estimated_stepping_batches`` does with a finite ``max_epochs``) and
        then never hands it the loader state of the checkpoint. So the position goes to the
        loader Lightning holds, or, when there is none yet, to the next one made here.
        """
        position = state_dict.get("train_loader")
        if position is None:
            return
        loader = self._fit_loader()
        if loader is not None:
            loader.load_state_dict(position)
        else:
            self._resume_position = dict(position)

    def val_dataloader(self) -> DataLoader:
        """Validation loader: fixed order, no augmentation, keeps the last partial batch."""
        self._require_setup()
        assert self.val_dataset is not None
        return DataLoader(
            self.val_dataset,
            batch_size=self.val_batch_size or self.batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    # ---------------------------------------------------------------- reports
    @property
    def num_train(self) -> int | None:
        """Number of training examples (after ``max_train_samples``), ``None`` before setup."""
        return None if self.train_targets is None else len(self.train_targets)

    @property
    def num_val(self) -> int | None:
        """Number of validation examples, ``None`` before setup."""
        return None if self.val_targets is None else len(self.val_targets)

    def describe(self) -> str:
        """One line for logs: name, split sizes, shapes, batch size and seed."""
        if self._is_set_up:
            sizes = f"train={self.num_train} val={self.num_val}"
        else:
            sizes = "train=? val=? (not set up)"
        shape = tuple(self.input_shape)
        label = "vocab_size" if self.task == "lm" else "num_classes"
        return (
            f"{self.display_name}: {sizes} input_shape={shape} {label}={self.num_classes} "
            f"task={self.task} batch_size={self.batch_size} seed={self.seed}"
        )


def split_by_permutation(
    inputs: torch.Tensor, targets: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffle with a generator seeded from ``seed`` and cut off ``val_fraction`` as validation.

    Returns ``(train_inputs, train_targets, val_inputs, val_targets)``; both
    parts are non-empty.
    """
    n = len(targets)
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    perm = torch.randperm(n, generator=seeded_generator(seed, "split"))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return inputs[train_idx], targets[train_idx], inputs[val_idx], targets[val_idx]


class PermutationSplitDataModule(TensorDataModule):
    """A labelled image set loaded whole, split into train/val by a permutation seeded from
    ``seed`` (the last ``val_fraction`` of it is validation). Subclasses implement
    :meth:`load_images` and set ``NUM_CLASSES``/``INPUT_SHAPE``."""

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        num_classes: int | None = None,
        input_shape: tuple[int, ...] | list[int] | None = None,
        **loader_args: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **loader_args)
        self.val_fraction = check_fraction("data.val_fraction", val_fraction)
        self.set_meta(num_classes, input_shape)

    def load_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images (N, C, H, W) float32 and labels (N,) int64."""
        raise NotImplementedError

    def _load(self) -> LoadedData:
        images, labels = self.load_images()
        x_tr, y_tr, x_va, y_va = split_by_permutation(images, labels, self.val_fraction, self.seed)
        return LoadedData(
            x_tr.contiguous(),
            y_tr,
            x_va.contiguous(),
            y_va,
            num_classes=int(labels.max()) + 1,
            input_shape=tuple(images.shape[1:]),
        )
