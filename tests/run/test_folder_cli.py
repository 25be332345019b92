"""Real ``python train.py`` processes into one folder: a finished run's folder is refused to a new
run (resuming it still works), two runs at once exclude each other by the folder lock, a sweep
never writes into another sweep's folder; a SLURM sweep without a controller is one line."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
from job_harness import folder_bytes, metric_rows, run_train, start_train

pytestmark = pytest.mark.slow

SMOKE = ["debug=smoke", "probes=none"]
# long enough that two runs started together overlap: the loser meets the winner's lock
LONGER = ["debug=smoke", "trainer.max_steps=40", "trainer.max_epochs=-1", "probes=standard"]


def race(runs: dict[str, list[str]], log_dir: Path) -> dict[str, tuple[int, str, float, int]]:
    """Start every run at once; name -> (exit code, stderr, end time, pid)."""
    procs = {name: start_train(args, log_dir, merge_stderr=False) for name, args in runs.items()}
    ends: dict[str, tuple[int, str, float, int]] = {}
    while len(ends) < len(procs):
        for name, proc in procs.items():
            if name not in ends and proc.poll() is not None:
                ends[name] = (proc.returncode, proc.stderr.read(), time.monotonic(), proc.pid)
        time.sleep(0.1)
    for proc in procs.values():
        proc.stdout.close()
        proc.stderr.close()
    return ends


def winner_and_loser(ends: dict[str, tuple[int, str, float, int]]) -> tuple[str, str]:
    winners = [n for n, end in ends.items() if end[0] == 0]
    assert len(winners) == 1, {n: (end[0], end[1][-2000:]) for n, end in ends.items()}
    (loser,) = [n for n in ends if n != winners[0]]
    return winners[0], loser


def test_new_run_into_a_finished_folder_is_refused_and_resume_still_works(tmp_path):
    job = tmp_path / "job"
    first = run_train([*SMOKE, f"hydra.run.dir={job}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = folder_bytes(job)
    second = run_train([*SMOKE, "optimizer=adam", f"hydra.run.dir={job}"], tmp_path)
    assert second.returncode == 1
    assert f"Error: job folder {job} already holds the results of another run" in second.stderr
    assert f"ckpt_path={job}/checkpoints/last.ckpt" in second.stderr
    assert "Traceback" not in second.stderr
    assert folder_bytes(job) == before  # also .hydra/: Hydra never started the refused job
    resumed = run_train(
        [
            *SMOKE,
            "trainer.max_steps=8",
            f"ckpt_path={job}/checkpoints/last.ckpt",
            f"hydra.run.dir={job}",
        ],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(metric_rows(job)) == list(range(8))
    assert json.loads((job / "summary.json").read_text())["global_step"] == 8


def test_two_runs_into_one_folder_at_once_one_runs_the_other_fails_fast(tmp_path):
    job = tmp_path / "job"
    runs = {opt: [*LONGER, f"optimizer={opt}", f"hydra.run.dir={job}"] for opt in ("adam", "sgd")}
    ends = race(runs, tmp_path)
    winner, loser = winner_and_loser(ends)
    code, stderr, end, _ = ends[loser]
    holder = f"pid {ends[winner][3]} on host"
    assert code == 1 and f"job folder {job} is in use by another optprobe run: {holder}" in stderr
    assert "Traceback" not in stderr
    assert end < ends[winner][2]  # failed while the winner still ran
    config = (job / "config.yaml").read_text()
    assert f"optimizer={winner}" in (job / ".hydra" / "overrides.yaml").read_text()
    assert ("torch.optim.Adam" in config) == (winner == "adam")
    assert sorted(metric_rows(job)) == list(range(40))  # one run's steps, once each


def sweep_table(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "sweep_summary.csv") as f:
        return list(csv.DictReader(f))


def test_later_sweep_into_a_sweep_folder_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_train(["-m", "optimizer=adam,sgd", *SMOKE, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = folder_bytes(sweep)
    later = run_train(["-m", "optimizer=sgdm", *SMOKE, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert later.returncode == 1
    assert f"Error: sweep folder {sweep} already holds another sweep or run" in later.stderr
    assert "Drop hydra.sweep.dir=" in later.stderr and "Traceback" not in later.stderr
    assert folder_bytes(sweep) == before  # job 0 and sweep_summary.csv untouched


def test_two_sweeps_at_once_in_one_folder_one_runs_the_other_fails_fast(tmp_path):
    sweep = tmp_path / "sweep"
    runs = {
        opts: ["-m", f"optimizer={opts}", *LONGER, f"hydra.sweep.dir={sweep}"]
        for opts in ("adam,sgd", "sgdm,adamw")
    }
    ends = race(runs, tmp_path)
    winner, loser = winner_and_loser(ends)
    code, stderr, end, _ = ends[loser]
    holder = f"pid {ends[winner][3]} on host"
    assert (
        code == 1 and f"sweep folder {sweep} is in use by another optprobe run: {holder}" in stderr
    )
    assert end < ends[winner][2]
    expected = [f"optimizer={o} {' '.join(LONGER)}" for o in winner.split(",")]
    assert [r["overrides"] for r in sweep_table(sweep)] == expected
    assert [r["status"] for r in sweep_table(sweep)] == ["completed", "completed"]
    for job in ("0", "1"):
        assert sorted(metric_rows(sweep / job)) == list(range(40))


def fake_slurm_commands(bin_dir: Path) -> None:
    """SLURM's client commands, installed but without a controller to talk to."""
    bin_dir.mkdir()
    for name in ("sbatch", "srun", "sacct", "sinfo"):
        script = bin_dir / name
        script.write_text(
            "#!/bin/sh\necho 'slurm_load_partitions: Unable to contact slurm controller "
            "(connect failure)' >&2\nexit 1\n"
        )
        script.chmod(0o755)


def test_slurm_launcher_without_controller_is_one_line_naming_the_local_cluster(tmp_path):
    fake_slurm_commands(tmp_path / "bin")
    out = run_train(
        ["-m", "hydra/launcher=slurm", *SMOKE],
        tmp_path / "logs",
        env_extra={"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"},
        timeout=300,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Unable to contact slurm controller" in lines[0]
    assert "slurm/start_cluster.sh" in lines[0]
    assert not (tmp_path / "logs").exists()  # no sweep folder was made
