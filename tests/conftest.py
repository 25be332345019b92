"""Shared fixtures: W&B off, one torch thread, Hydra configs composed with outputs in tmp_path,
a tiny CIFAR-10 folder.

The folder holding this file (tests/) is on ``sys.path`` (pytest's default "prepend" import mode,
no ``__init__.py`` files), so test files anywhere below import ``conftest``, ``harness`` and
``job_harness`` by name. Test file names must therefore be unique across all folders."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TIMM_FUSED_ATTN", "0")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"


def compose_config(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """Compose conf/train.yaml like ``python train.py <overrides>`` would, writing to output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.log_dir = str(output_dir)
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def compose_cfg() -> Callable[[Sequence[str], Path], DictConfig]:
    """``compose_config`` itself, for fixtures of a wider scope than ``make_cfg``."""
    return compose_config


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(overrides, name="run")``: a composed config whose outputs go under tmp_path."""
    counter = {"n": 0}

    def factory(overrides: Sequence[str] = (), name: str | None = None) -> DictConfig:
        counter["n"] += 1
        return compose_config(overrides, tmp_path / (name or f"run{counter['n']}"))

    yield factory
    GlobalHydra.instance().clear()


IMAGES_PER_FILE = 20
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cifar_pixels(file_index: int, image_index: int) -> np.ndarray:
    """Known uint8 row (3072,) for image ``image_index`` of file ``file_index``."""
    base = 7 * file_index + 13 * image_index
    return ((np.arange(3072) + base) % 251).astype(np.uint8)


def cifar_label(file_index: int, image_index: int) -> int:
    return (3 * file_index + image_index) % 10


def write_cifar(root: Path, files: Sequence[str] = CIFAR_FILES) -> Path:
    """Write a tiny CIFAR-10 folder in the real python-pickle format (``IMAGES_PER_FILE``
    images per batch file, pixels from ``cifar_pixels``); returns data_dir (``root``)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for file_index, name in enumerate(files):
        data = np.stack([cifar_pixels(file_index, i) for i in range(IMAGES_PER_FILE)])
        labels = [cifar_label(file_index, i) for i in range(IMAGES_PER_FILE)]
        entry = {b"batch_label": name.encode(), b"data": data, b"labels": labels}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    return root


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A tiny CIFAR-10 data_dir (see ``write_cifar``)."""
    return write_cifar(tmp_path / "cifar_data")
