"""The credible-scale experiments compose with what their names promise (full data, epochs,
schedules through warmup and decay, context), and their models have the promised size, counted
on the CPU-built model."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

RESNETS = {"resnet18_cifar10_30ep": 30, "study_resnet18_cifar10": 200}
GPT2_SMALL_NON_EMBEDDING = 85_056_000
"""GPT-2 small's parameters without its token and position embeddings: 12 blocks of
7,087,872 (attention 2,362,368, MLP 4,722,432, two LayerNorms 3,072) plus the final
LayerNorm's 1,536 (124,439,808 in all, less 50257 × 768 + 1024 × 768 for the embeddings)."""


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied head is counted once


@pytest.mark.parametrize("name,epochs", RESNETS.items())
def test_resnet_experiments_train_on_full_cifar10_with_the_whole_cosine_schedule(
    make_cfg, name, epochs
):
    cfg = make_cfg([f"experiment={name}"])
    assert cfg.data.max_train_samples is None and cfg.data.batch_size == 128
    assert cfg.trainer.max_epochs == epochs and cfg.trainer.max_steps == -1
    assert cfg.scheduler._target_.endswith("cosine") and cfg.scheduler.min_ratio == 0.0
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0.9
    model = instantiate(cfg.model)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert 11.0e6 < _count(model) < 11.3e6  # ResNet-18 with a 10-class head: 11.17M


def test_gpt_10m_has_about_ten_million_parameters_and_runs_through_warmup_and_decay(make_cfg):
    cfg = make_cfg(["experiment=gpt_10m"])
    assert cfg.data.seq_len >= 256 and cfg.data.max_chars is None
    assert cfg.trainer.max_steps >= 5000
    assert 0 < cfg.scheduler.warmup_steps < cfg.trainer.max_steps
    assert cfg.scheduler._target_.endswith("warmup_linear") and cfg.scheduler.min_ratio == 0.0
    model = instantiate(cfg.model)
    assert 9.5e6 < _count(model) < 11.0e6
    logits = model(torch.zeros(1, cfg.data.seq_len, dtype=torch.long))
    assert logits.shape == (1, cfg.data.seq_len, cfg.data.vocab_size)


def test_study_gpt2_small_has_gpt2_small_blocks(make_cfg):
    cfg = make_cfg(["experiment=study_gpt2_small"])
    assert cfg.trainer.max_steps == 50_000 and cfg.data.seq_len == 1024
    assert 0 < cfg.scheduler.warmup_steps < cfg.trainer.max_steps
    model = instantiate(cfg.model)
    embeddings = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    assert _count(model) - embeddings == GPT2_SMALL_NON_EMBEDDING


@pytest.mark.parametrize("launcher", ["slurm", "slurm_gpu"])
@pytest.mark.parametrize("name", [*RESNETS, "gpt_10m", "study_gpt2_small"])
def test_scale_experiments_compose_with_gpu_trainer_and_slurm_launchers(make_cfg, name, launcher):
    cfg = make_cfg([f"experiment={name}", "trainer=gpu", f"hydra/launcher={launcher}"])
    assert cfg.trainer.accelerator == "gpu" and name in cfg.tags
    assert "SlurmLauncher" in cfg.hydra.launcher._target_


def test_gpt_400k_scales_the_study_setting_and_changes_nothing_else(make_cfg):
    """`make scale` compares gpt_shakespeare_400k with gpt_shakespeare: the model (7x the
    parameters), context, steps and corpus grow; optimizer, weight decay, clipping and the
    schedule's shape stay, and the verdicts' probes are there (step, step_fresh, curvature)."""
    small = make_cfg(["experiment=gpt_shakespeare", "optimizer=adamw"])
    large = make_cfg(["experiment=gpt_shakespeare_400k", "optimizer=adamw"])
    ratio = _count(instantiate(large.model)) / _count(instantiate(small.model))
    assert 6 < ratio < 8
    assert large.data.seq_len > small.data.seq_len and large.trainer.max_steps > 120
    for key in ("optimizer", "scheduler._target_", "trainer.gradient_clip_val"):
        node_small, node_large = small, large
        for part in key.split("."):
            node_small, node_large = node_small[part], node_large[part]
        assert node_small == node_large, key
    assert {"step", "step_fresh", "curvature"} <= {k for k, v in large.probes.items() if v}


def test_gpt_400k_xstar_is_the_scale_run_with_the_reference_probe_alone(make_cfg):
    """`make scale-xstar` measures convexity towards x* on the same runs as `make scale`: every
    setting but the probes is the scale grid's, and only the reference probe fires (every step)."""
    grid = make_cfg(["experiment=gpt_shakespeare_400k", "optimizer=sgdm"])
    xstar = make_cfg(["experiment=gpt_shakespeare_400k_xstar", "optimizer=sgdm"])
    for key in ("model", "data", "optimizer", "scheduler", "trainer"):
        if key == "trainer":  # each composed config gets its own output folder
            xstar.trainer.default_root_dir = grid.trainer.default_root_dir
        assert xstar[key] == grid[key], key
    assert {k for k, v in xstar.probes.items() if v} == {"reference"}
    probe = instantiate(xstar.probes.reference)
    assert probe.is_probe_step(0) and probe.is_probe_step(1) and probe.is_probe_step(199)
