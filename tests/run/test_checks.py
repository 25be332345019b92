"""Bad input fails early and clearly, before training (optprobe.run.checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from optprobe.run.job import train


def test_resume_from_another_config_fails_before_training(make_cfg):
    first = make_cfg(["debug=smoke", "probes=none", "trainer.max_steps=2"], name="a")
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    other = make_cfg(
        ["debug=smoke", "probes=none", "optimizer=adam", f"ckpt_path={ckpt}"], name="b"
    )
    with pytest.raises(ValueError, match="another config.*optimizer"):
        train(other)
    assert not (Path(other.paths.output_dir) / "metrics.csv").exists()


@pytest.mark.parametrize("lr", ["0", "-0.1"])
def test_non_positive_learning_rate_is_rejected(make_cfg, lr):
    with pytest.raises(ValueError, match="optimizer.lr must be a positive number"):
        train(make_cfg(["debug=smoke", f"optimizer.lr={lr}"]))


def test_missing_checkpoint_is_a_clear_error(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path=.*does not exist"):
        train(make_cfg(["debug=smoke", f"ckpt_path={tmp_path / 'nope.ckpt'}"]))


def test_model_that_cannot_read_data_fails_before_training(make_cfg):
    cfg = make_cfg(["model=gpt", "data=digits", "debug=smoke"])
    with pytest.raises(Exception, match="data"):
        train(cfg)
    summary = Path(cfg.paths.output_dir) / "summary.json"
    assert '"failed"' in summary.read_text()
