"""The shared reference-run cache (<log_dir>/reference_runs/<hash>): an unusable entry is
rebuilt, never reused or mixed; one process at a time writes an entry
(optprobe.run.reference_run)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from job_harness import metric_rows

from optprobe.run.folder import JobFolder
from optprobe.run.job import train
from optprobe.run.reference_run import trajectory_fingerprint

REFERENCE = ["debug=smoke", "probes=reference", "model=logreg"]


def cache_entry(log_dir: Path) -> JobFolder:
    (entry,) = [p for p in (log_dir / "reference_runs").iterdir() if p.is_dir()]
    return JobFolder(entry)


def spoil_checkpoint(entry: JobFolder) -> None:
    data = entry.last_checkpoint.read_bytes()
    entry.last_checkpoint.write_bytes(data[: len(data) // 3])


def spoil_summary(entry: JobFolder) -> None:
    entry.summary.write_text('{"status": "compl')


def mark_failed(entry: JobFolder) -> None:
    entry.write_summary({**entry.read_summary(), "status": "failed"})


@pytest.mark.parametrize(
    "spoil,reason",
    [
        (spoil_checkpoint, "its checkpoints/last.ckpt is damaged"),
        (spoil_summary, "its summary.json cannot be read"),
        (mark_failed, "the run did not complete (status 'failed')"),
    ],
)
def test_unusable_cache_entry_is_rebuilt(make_cfg, capsys, spoil, reason):
    first = make_cfg(REFERENCE, name="a")
    train(first)
    entry = cache_entry(Path(first.paths.log_dir))
    spoil(entry)
    capsys.readouterr()
    again = make_cfg(REFERENCE, name="b")
    again.paths.log_dir = first.paths.log_dir
    train(again)
    out = capsys.readouterr().out
    assert f"the cached reference run {entry.path} is unusable ({reason}" in out
    assert "rebuilding it" in out and "running the reference run" in out
    assert json.loads(entry.summary.read_text())["status"] == "completed"
    assert sorted(metric_rows(entry.path)) == list(range(6))  # the new run alone, not mixed
    assert json.loads(JobFolder(again.paths.output_dir).summary.read_text())["status"] == (
        "completed"
    )


# another process holding a lock file as optprobe does: flock, then its record
HOLD = textwrap.dedent(
    """
    import fcntl, json, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    record = {"pid": os.getpid(), "host": "h", "since": "t", "command": "c"}
    os.write(fd, json.dumps(record).encode())
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    os.close(fd)
    print(time.time(), flush=True)
    """
)


def test_a_reference_run_being_written_is_waited_for(make_cfg, capsys):
    """Another process holds the entry's lock (as while it runs the reference run): this job
    says so, waits, and writes the entry only after the lock is released."""
    cfg = make_cfg(REFERENCE)
    log_dir = Path(cfg.paths.log_dir)
    lock = log_dir / "reference_runs" / f"{trajectory_fingerprint(cfg)}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), "6"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.time()
        train(cfg)
        released = float(holder.stdout.readline())
    finally:
        holder.kill()
        holder.wait()
    out = capsys.readouterr().out
    assert f"is being written by pid {holder.pid}" in out and "waiting for it" in out
    entry = cache_entry(log_dir)
    assert entry.path.name == lock.stem  # the lock this test held is the entry's
    written = min(p.stat().st_mtime for p in entry.path.rglob("*") if p.is_file())
    assert start < released <= written + 0.05  # nothing written while the other held it
