"""A job's output in a batch log (standard output a pipe): the compact progress line instead of
the progress bar, and none of the Lightning / W&B messages that say nothing about the job."""

from __future__ import annotations

import re

import pytest
from job_harness import job_folder, run_train

pytestmark = pytest.mark.slow

NOISE = (
    "litlogger",  # Lightning's advertisement
    "`srun` command is available",  # Lightning's SLURM hint, srun on PATH or not
    "LeafSpec",  # torch's pytree deprecation, through Lightning's pytree copy
    "weights_only",  # Lightning's "`weights_only` was not set" on saving and loading
    "anonymous setting",  # W&B's "has no effect", from Lightning's anonymous=None
)
PROGRESS = re.compile(r"^\[optprobe\] epoch \d+ step (\d+)/(\d+) loss=\S+ elapsed \S+, ", re.M)


def job_output(args: list[str], tmp_path) -> str:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "WANDB_MODE": "offline"}
    out = run_train(args, tmp_path, env_extra=env, timeout=300, without_wandb_env=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def test_batch_log_has_progress_lines_and_no_noise(tmp_path):
    common = ["debug=smoke", "logger=wandb", "trainer.enable_progress_bar=true"]
    first = job_output(common, tmp_path)
    ckpt = job_folder(tmp_path) / "checkpoints" / "last.ckpt"
    resume = ["trainer.max_steps=10", f"ckpt_path={ckpt}", f"hydra.run.dir={ckpt.parents[1]}"]
    resumed = job_output([*common, *resume], tmp_path)
    for text, steps in ((first, range(1, 7)), (resumed, range(7, 11))):
        for message in NOISE:
            assert message not in text, message
        assert "\r" not in text  # no progress bar redrawn in the log
        assert not re.search(r"\.py:\d+: \w*Warning", text), text  # no Python warning at all
        # a job of a few seconds: one line, at its last step (tenths need min_gap_s between)
        assert [(int(s), int(n)) for s, n in PROGRESS.findall(text)] == [
            (steps.stop - 1, steps.stop - 1)
        ]
