"""CIFAR-10 from the python-pickle batch files (optprobe.data.cifar10): decoding, augmentation,
clear errors for a missing or misplaced folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import IMAGES_PER_FILE, cifar_label, cifar_pixels
from data_factories import perturb_global_rng

from optprobe.data import CIFAR10DataModule
from optprobe.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD


def make_cifar(data_dir: Path, **kw) -> CIFAR10DataModule:
    return CIFAR10DataModule(data_dir=str(data_dir), **{"batch_size": 16, **kw})


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
