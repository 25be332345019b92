"""The shared data-module behaviour (optprobe.data.base): shapes, splits, seeding, argument
and config checks, every built-in data set under a Lightning trainer."""

from __future__ import annotations

import math

import pytest
import torch
from data_factories import (
    FACTORIES,
    first_batch,
    make_digits,
    make_mnist,
    make_synthetic,
    perturb_global_rng,
)

from optprobe.data import DigitsDataModule

# --------------------------------------------------------------------------- shapes
EXPECTED = {
    # name: (task, num_classes, input_shape, n_train, n_val, input dtype)
    "digits": ("classification", 10, (1, 8, 8), 1438, 359, torch.float32),
    "mnist5k": ("classification", 10, (1, 28, 28), 4000, 1000, torch.float32),
    "shakespeare": ("lm", 84, (32,), None, None, torch.int64),
    "synthetic": ("classification", 10, (1, 8, 8), 410, 102, torch.float32),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_shapes_dtypes_sizes(name: str) -> None:
    task, num_classes, shape, n_train, n_val, dtype = EXPECTED[name]
    dm = FACTORIES[name]()
    # The attributes are there before setup (model configs read them).
    assert (dm.task, dm.num_classes, dm.input_shape) == (task, num_classes, shape)
    dm.setup("fit")
    if n_train is not None:
        assert (dm.num_train, dm.num_val) == (n_train, n_val)
    for inputs, targets in ((dm.train_inputs, dm.train_targets), (dm.val_inputs, dm.val_targets)):
        assert inputs.dtype == dtype
        assert tuple(inputs.shape[1:]) == shape
        assert targets.dtype == torch.int64
        assert len(inputs) == len(targets) > 0
        assert int(targets.min()) >= 0 and int(targets.max()) <= num_classes - 1
    if task == "classification":
        assert float(dm.train_inputs.min()) >= -10 and torch.isfinite(dm.train_inputs).all()
        assert targets.shape == (len(targets),)
    else:
        assert tuple(dm.train_targets.shape[1:]) == shape

    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == (dm.batch_size, *shape)
    assert y.shape[0] == dm.batch_size and y.dtype == torch.int64
    assert len(dm.train_dataloader()) == dm.num_train // dm.batch_size  # drop_last
    val_batches = list(dm.val_dataloader())
    assert sum(len(b[1]) for b in val_batches) == dm.num_val  # val keeps every example
    assert name in dm.describe() and str(dm.num_train) in dm.describe()


def test_setup_is_idempotent_and_max_train_samples() -> None:
    dm = make_digits(max_train_samples=100)
    dm.setup("fit")
    first = dm.train_inputs
    dm.setup("validate")
    assert dm.train_inputs is first
    assert dm.num_train == 100 and dm.num_val == 359


def test_loader_before_setup_raises() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        make_synthetic().train_dataloader()


# --------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("name", list(FACTORIES))
def test_same_seed_same_batches_regardless_of_global_rng(name: str) -> None:
    make = FACTORIES[name]
    torch.manual_seed(0)
    x0, y0 = first_batch(make(seed=3))
    perturb_global_rng()
    x1, y1 = first_batch(make(seed=3))
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    x2, _ = first_batch(make(seed=4))
    assert not torch.equal(x0, x2)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_order_depends_only_on_seed(name: str) -> None:
    """Same data, different seeds: the train order differs; the global RNG never matters."""
    dm = FACTORIES[name](seed=0)
    dm.setup()
    torch.manual_seed(1)
    a = next(iter(dm.train_dataloader()))[0]
    perturb_global_rng()
    b = next(iter(dm.train_dataloader()))[0]
    assert torch.equal(a, b)
    dm.seed = 1  # only the shuffle seed changes; the loaded tensors stay
    c = next(iter(dm.train_dataloader()))[0]
    assert not torch.equal(a, c)


def test_epochs_differ_but_are_reproducible() -> None:
    def two_epochs() -> list[torch.Tensor]:
        dm = make_synthetic(seed=5)
        dm.setup()
        loader = dm.train_dataloader()
        epochs = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
            epochs.append(torch.cat([y for _, y in loader]))
        return epochs

    run1 = two_epochs()
    perturb_global_rng()
    run2 = two_epochs()
    assert not torch.equal(run1[0], run1[1])
    assert all(torch.equal(a, b) for a, b in zip(run1, run2, strict=True))
    # a fresh loader (as after resuming from a checkpoint) at epoch 1 repeats epoch 1
    dm = make_synthetic(seed=5)
    dm.setup()
    resumed = dm.train_dataloader()
    resumed.sampler.set_epoch(1)
    assert torch.equal(torch.cat([y for _, y in resumed]), run1[1])


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "32", None])
def test_invalid_batch_size(bad: object) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        DigitsDataModule(batch_size=bad)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"val_batch_size": 0}, "val_batch_size"),
        ({"seed": -1}, "seed"),
        ({"num_workers": -2}, "num_workers"),
        ({"max_train_samples": 0}, "max_train_samples"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": 0}, "val_fraction"),
        ({"drop_last": "yes"}, "drop_last"),
        ({"input_shape": [1, 0, 8]}, "input_shape"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_invalid_arguments(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        make_digits(**kwargs)


def test_batch_larger_than_train_set_with_drop_last() -> None:
    dm = make_synthetic(num_samples=20, batch_size=64)
    with pytest.raises(ValueError, match="drop_last"):
        dm.setup()
    dm = make_synthetic(num_samples=20, batch_size=64, drop_last=False)
    dm.setup()
    assert len(dm.train_dataloader()) == 1


def test_mismatched_num_classes() -> None:
    dm = make_digits(num_classes=12)
    with pytest.raises(ValueError, match=r"num_classes") as info:
        dm.setup()
    assert "10" in str(info.value) and "data.num_classes" in str(info.value)


def test_mismatched_input_shape() -> None:
    dm = make_mnist(input_shape=[1, 8, 8])
    with pytest.raises(ValueError, match=r"input_shape") as info:
        dm.setup()
    assert "[1, 28, 28]" in str(info.value)


def test_matching_config_values_accepted_from_listconfig() -> None:
    omegaconf = pytest.importorskip("omegaconf")
    from hydra.utils import instantiate

    cfg = omegaconf.OmegaConf.create(
        {
            "_target_": "optprobe.data.digits.DigitsDataModule",
            "batch_size": 16,
            "seed": 0,
            "num_classes": 10,
            "input_shape": [1, 8, 8],
        }
    )
    dm = instantiate(cfg)
    assert isinstance(dm, DigitsDataModule) and dm.input_shape == (1, 8, 8)
    dm.setup()


# --------------------------------------------------------------------------- Lightning
def test_runs_under_lightning_trainer() -> None:
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self, features: int, classes: int) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(features, classes)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.linear(x.flatten(1)), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.linear(x.flatten(1)), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = make_synthetic()
    model = Tiny(math.prod(dm.input_shape), dm.num_classes)
    trainer = pl.Trainer(
        max_steps=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3
