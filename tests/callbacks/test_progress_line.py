"""``ProgressLine``: when it prints (every 10 % of the steps unless within ``min_gap_s`` of the
last line, every ``every_s`` seconds, at the last step) and what the line says, on a stand-in
trainer."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from optprobe.callbacks.progress import ProgressLine


def steps_printed(line: ProgressLine, first: int, total: float, capsys) -> list[int]:
    trainer = SimpleNamespace(
        global_step=first,
        estimated_stepping_batches=total,
        current_epoch=0,
        should_stop=False,
        callback_metrics={"train/loss": torch.tensor(0.5)},
    )
    line.on_train_start(trainer, None)
    for step in range(first + 1, 101):
        trainer.global_step = step
        line.on_train_batch_end(trainer, None, None, None, step)
    out = capsys.readouterr().out
    return [int(s) for s in re.findall(r"^\[optprobe\] epoch 0 step (\d+)", out, re.M)]


def test_prints_every_tenth_of_the_steps_and_the_last(capsys):
    assert steps_printed(ProgressLine(every_s=1e9, min_gap_s=0), 0, 100, capsys) == list(
        range(10, 101, 10)
    )


def test_a_resumed_segment_prints_a_tenth_of_the_run_after_its_start(capsys):
    assert steps_printed(ProgressLine(every_s=1e9, min_gap_s=0), 55, 100, capsys) == [
        65,
        75,
        85,
        95,
        100,
    ]


def test_a_short_job_prints_only_its_last_step(capsys):
    """Tenths of a job that lasts less than min_gap_s are not worth a line each."""
    assert steps_printed(ProgressLine(every_s=1e9, min_gap_s=1e9), 0, 100, capsys) == [100]


def test_prints_every_step_when_every_s_has_passed(capsys):
    assert steps_printed(ProgressLine(every_s=1e-9), 90, 100, capsys) == list(range(91, 101))


def test_unknown_total_prints_on_time_only(capsys):
    line = ProgressLine(every_s=1e-9)
    assert steps_printed(line, 98, float("inf"), capsys) == [99, 100]
    line.on_train_batch_end(
        SimpleNamespace(
            global_step=101,
            estimated_stepping_batches=float("inf"),
            current_epoch=0,
            should_stop=False,
            callback_metrics={},
        ),
        None,
        None,
        None,
        0,
    )
    assert re.fullmatch(
        r"\[optprobe\] epoch 0 step 101 elapsed \d+s, time left unknown\n", capsys.readouterr().out
    )


def test_rejects_a_cadence_that_never_prints():
    with pytest.raises(ValueError, match="every_s > 0"):
        ProgressLine(every_s=0)
