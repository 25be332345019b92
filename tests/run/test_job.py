"""Short real training runs: loss decreases, job folder complete, bit-identical reproducibility."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from job_harness import metric_rows, trained_state

from optprobe.run.job import train

FAMILIES = {
    "logreg": ["model=logreg", "data=synthetic", "optimizer=sgd", "optimizer.lr=0.5"],
    "mlp": ["model=mlp", "data=synthetic", "optimizer=adam", "optimizer.lr=0.01"],
    "resnet18": ["model=resnet18", "data=synthetic", "data.input_shape=[3,32,32]"],
    "vit_tiny": ["model=vit_tiny", "data=synthetic", "data.input_shape=[3,32,32]"],
    "gpt": ["model=gpt", "data=shakespeare", "data.max_chars=30000", "data.seq_len=32"],
}
TINY = [
    "probes=none",
    "data.batch_size=16",
    "data.max_train_samples=64",
    "trainer.max_epochs=-1",
    "trainer.max_steps=24",
    "trainer.val_check_interval=null",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
]


def train_losses(output_dir: Path) -> list[float]:
    return [
        r["train/loss"] for _, r in sorted(metric_rows(output_dir).items()) if "train/loss" in r
    ]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_short_run_decreases_loss_and_writes_job_folder(make_cfg, family):
    overrides = FAMILIES[family] + TINY
    if family in {"resnet18", "vit_tiny", "gpt"}:
        overrides += ["optimizer=adam", "optimizer.lr=0.003"]
    if family in {"resnet18", "vit_tiny"}:
        overrides += ["data.num_samples=64", "data.batch_size=8", "trainer.max_steps=16"]
    cfg = make_cfg(overrides)
    metrics, _ = train(cfg)
    out = Path(cfg.paths.output_dir)
    losses = train_losses(out)
    assert len(losses) == cfg.trainer.max_steps
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.9 * first, f"{family}: loss {first:.3f} -> {last:.3f}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["metrics"]["train/loss"] == pytest.approx(losses[-1], rel=1e-6)
    assert summary["wall_time_s"] > 0
    assert "val/acc" in summary["metrics"]
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name


def test_same_seed_gives_bit_identical_parameters(make_cfg):
    overrides = [
        "debug=smoke",
        "optimizer=sgdm",
        "model=mlp",
        "trainer.max_steps=10",
        "probes=none",
    ]
    a, opt_a, _ = trained_state(make_cfg(overrides))
    b, opt_b, _ = trained_state(make_cfg(overrides))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert opt_a.keys() == opt_b.keys() and opt_a
    for pid, state in opt_a.items():
        assert torch.equal(state["momentum_buffer"], opt_b[pid]["momentum_buffer"])
    c, _, _ = trained_state(make_cfg([*overrides, "seed=1"]))
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_metrics_csv_has_one_row_per_step(make_cfg):
    cfg = make_cfg(["debug=smoke"])
    train(cfg)
    with open(Path(cfg.paths.output_dir) / "metrics.csv") as f:
        steps = [r["step"] for r in csv.DictReader(f)]
    assert len(steps) == len(set(steps)) == cfg.trainer.max_steps
    text = (Path(cfg.paths.output_dir) / "metrics.csv").read_text()
    assert "val/acc" in text.splitlines()[0]
