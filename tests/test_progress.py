"""Progress wording and arithmetic (``optprobe.progress``): durations, time left, the sweep's
"job i of N" line."""

from __future__ import annotations

import math

import pytest

from optprobe.progress import eta_text, format_duration, remaining_s, sweep_line


@pytest.mark.parametrize(
    "seconds,text",
    [
        (0, "0s"),
        (59.4, "59s"),
        (60, "1m00s"),
        (185, "3m05s"),
        (3599.4, "59m59s"),
        (3600, "1h00m"),
        (7620, "2h07m"),
        (-3, "0s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_remaining_is_the_mean_rate_times_what_is_left():
    # 4 of 10 units in 20 s: 5 s each, 6 left -> 30 s
    assert remaining_s(4, 10, 20.0) == pytest.approx(30.0)
    assert remaining_s(10, 10, 20.0) == 0.0
    assert remaining_s(0, 10, 0.0) is None
    assert remaining_s(3, math.inf, 9.0) is None
    assert eta_text(4, 10, 20.0) == "~30s left"
    assert eta_text(0, 10, 0.0) == "time left unknown"


def test_sweep_line_estimates_from_the_finished_jobs():
    assert sweep_line(1, 30, []) == "[optprobe] job 1 of 30"
    # 2 jobs finished in 100 s and 140 s: 120 s each, 28 jobs left -> 56 minutes
    assert sweep_line(3, 30, [100.0, 140.0]) == "[optprobe] job 3 of 30, ~56m00s left"
    # third of three sweeps of 10 jobs: 1 job of this sweep done in 30 s, 8 left after job 22
    assert sweep_line(22, 30, [30.0]) == "[optprobe] job 22 of 30, ~4m30s left"
    assert sweep_line(4, None, [5.0]) == "[optprobe] job 4"
