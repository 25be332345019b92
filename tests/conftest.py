"""Shared fixtures: W&B off, one torch thread, Hydra configs composed with outputs in tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

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


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A tiny CIFAR-10 folder in the real python-pickle format (10 images per batch file)."""
    import pickle

    import numpy as np

    root = tmp_path / "cifar_data"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, size=(10, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, size=10)),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root
