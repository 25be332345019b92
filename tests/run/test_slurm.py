"""A real single-node SLURM cluster (slurm/start_cluster.sh): a Hydra sweep submitted as one
array job through ``hydra/launcher=slurm``, and Lightning's SIGUSR1 checkpoint + requeue + resume.

Needs root (the script installs the Debian packages and starts the daemons); skipped otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1800)]

START = ROOT / "slurm" / "start_cluster.sh"
STOP = ROOT / "slurm" / "stop_cluster.sh"
PACKAGES = ("munge", "slurm-client", "slurmctld", "slurmd", "slurmdbd", "mariadb-server")
# exit codes of start_cluster.sh that mean "cannot run here" rather than "broken"
SKIP_CODES = {2: "not root", 3: "packages missing and no apt-get", 4: "a foreign SLURM config"}


# seconds between a requeue and the restart: past the second in which slurmd revoked the job's
# credential (see start_requeued_job_now)
CREDENTIAL_REVOKE_SECONDS = 2


def sh(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def packages_installed() -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    out = sh("dpkg-query", "-W", "-f=${Status}\\n", *PACKAGES)
    return out.returncode == 0 and out.stdout.count("install ok installed") == len(PACKAGES)


def cluster_up() -> bool:
    """True when slurmctld answers and a node is idle/mixed/allocated."""
    if shutil.which("sinfo") is None:
        return False
    try:
        out = sh("sinfo", "-h", "-o", "%t", timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and any(
        s.strip() in {"idle", "mix", "alloc"} for s in out.stdout.splitlines()
    )


@pytest.fixture(scope="module")
def slurm_cluster():
    """Start the local cluster (stopped again afterwards only if this fixture started it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: slurm/start_cluster.sh installs packages and starts daemons")
    if not packages_installed() and shutil.which("apt-get") is None:
        pytest.skip("the SLURM packages are not installed and apt-get is not available")
    was_up = cluster_up()
    t0 = time.monotonic()
    out = subprocess.run(
        ["bash", str(START)],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    if out.returncode in SKIP_CODES:
        pytest.skip(f"slurm/start_cluster.sh: {SKIP_CODES[out.returncode]}: {out.stderr.strip()}")
    if out.returncode != 0 and not was_up:
        stop_cluster()  # do not leave a half-started cluster behind
    assert out.returncode == 0, f"start_cluster.sh failed:\n{out.stdout}\n{out.stderr}"
    print(f"\nstart_cluster.sh took {time.monotonic() - t0:.1f} s:\n{out.stdout}")
    yield
    if not was_up:
        # jobs a failed test left queued or running would outlive the daemons
        sh("scancel", "--user=root")  # the fixture runs as root
        time.sleep(2)
        stop = stop_cluster()
        assert stop.returncode == 0, f"stop_cluster.sh failed:\n{stop.stdout}\n{stop.stderr}"


def stop_cluster() -> subprocess.CompletedProcess:
    out = subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=300)
    print(out.stdout, out.stderr)
    return out


def train_cmd(job_name: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.cpus_per_task=1",
        f"hydra.launcher.name={job_name}",
        *overrides,
    ]


def train_env(log_dir: Path) -> dict[str, str]:
    return {**os.environ, "OPTPROBE_LOG_DIR": str(log_dir), "WANDB_MODE": "disabled"}


def sacct_states(job_id: str) -> list[str]:
    """States of one job (by its raw id, also for array tasks), oldest first (-D: requeues too)."""
    out = sh("sacct", "-j", job_id, "-n", "-X", "-D", "-P", "-o", "JobIDRaw,State")
    assert out.returncode == 0, out.stderr
    rows = [line.split("|") for line in out.stdout.splitlines() if line.strip()]
    return [state.split()[0] for raw, state in rows if raw == job_id]


def sacct_field(job_id: str, field: str) -> str:
    """One sacct field of the job whose raw id is ``job_id``."""
    out = sh("sacct", "-j", job_id, "-n", "-X", "-P", "-o", f"JobIDRaw,{field}")
    rows = [line.split("|", 1) for line in out.stdout.splitlines() if line.strip()]
    values = [value for raw, value in rows if raw == job_id]
    assert values, f"sacct knows no job {job_id}: {out.stdout}{out.stderr}"
    return values[-1]


def wait_for_states(job_id: str, final: str, timeout: float = 60) -> list[str]:
    """sacct learns the end of a job from slurmctld a moment after the launcher does."""
    deadline = time.monotonic() + timeout
    states = sacct_states(job_id)
    while (not states or states[-1] != final) and time.monotonic() < deadline:
        time.sleep(1)
        states = sacct_states(job_id)
    return states


def job_dirs(log_dir: Path) -> list[Path]:
    sweeps = list((log_dir / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    return sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())


def test_sweep_runs_as_slurm_array_job(slurm_cluster, tmp_path):
    name = f"optprobe-test-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    try:
        out = subprocess.run(
            train_cmd(name, "optimizer=adam,sgd", "debug=smoke", "probes=none"),
            cwd=ROOT,
            env=train_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        sh("scancel", f"--name={name}")  # nothing left queued when the launcher failed
        raise
    print(f"\nsweep through SLURM took {time.monotonic() - t0:.1f} s")
    if out.returncode != 0:
        sh("scancel", f"--name={name}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Submitit 'slurm' sweep output dir" in out.stdout + out.stderr

    jobs = job_dirs(tmp_path)
    assert [p.name for p in jobs] == ["0", "1"]
    ids = []
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed", summary.get("error")
        assert summary["metrics"], summary
        assert "train/loss" in summary["metrics"]
        job_id = summary["slurm_job_id"]
        assert job_id, f"{job}: no slurm_job_id in summary.json (not run by SLURM?)"
        ids.append(job_id)
        assert wait_for_states(job_id, "COMPLETED")[-1:] == ["COMPLETED"], sacct_states(job_id)
    assert len(set(ids)) == 2, ids
    # both jobs were tasks of one array job: JobID is <array id>_<task> for each
    names = [sacct_field(i, "JobID") for i in ids]
    assert all("_" in n for n in names), names
    assert len({n.split("_")[0] for n in names}) == 1, names


def probe_rows(job: Path) -> dict[str, dict[str, str]]:
    """metrics.csv of a job: step -> the probe values logged at it."""
    with open(job / "metrics.csv") as f:
        return {
            r["step"]: {k: v for k, v in r.items() if k.startswith(("step/", "noise/")) and v}
            for r in csv.DictReader(f)
        }


def wait_until_task_zero_trains(launcher: subprocess.Popen, log_dir: Path) -> tuple[Path, str]:
    """Task 0's job folder and SLURM job id once it trains (the signal handler is set when
    training starts): more than 10 rows in its metrics.csv."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert launcher.poll() is None, launcher.stdout.read()
        found = list((log_dir / "train" / "multiruns").glob("*/0/metrics.csv"))
        if found and len(found[0].read_text().splitlines()) > 10:
            job = found[0].parent
            return job, json.loads((job / "summary.json").read_text())["slurm_job_id"]
        time.sleep(0.5)
    raise AssertionError("task 0 did not start training within 300 s")


def wait_for_checkpoint_and_requeue(job: Path, job_id: str, timeout: float = 120) -> None:
    """After SIGUSR1: the job folder has the HPC checkpoint and sacct lists a requeue."""
    deadline = time.monotonic() + timeout
    while not (job / "hpc_ckpt_1.ckpt").exists() or "REQUEUED" not in sacct_states(job_id):
        assert time.monotonic() < deadline, (
            f"no checkpoint + requeue after SIGUSR1: {sacct_states(job_id)}, "
            f"{sorted(p.name for p in job.iterdir())} (did training end first?)"
        )
        time.sleep(0.5)


def start_requeued_job_now(job_id: str) -> bool:
    """A requeued job waits ~2 min for its BeginTime (SLURM's requeue delay): skip most of it.
    Not all: slurmd refuses a job's credential made in the second it revoked the job's last one
    (at the requeue; times in whole seconds), so a restart within that second fails to launch
    and the job ends FAILED. The start time is reset 2 s after the requeue was seen.
    True when the start time was reset (False: it already runs, or never showed as pending)."""
    for _ in range(60):
        reason = sh("squeue", "-h", "-j", job_id, "-o", "%T %r").stdout.split()
        if reason == ["PENDING", "BeginTime"]:
            time.sleep(CREDENTIAL_REVOKE_SECONDS)
            sh("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            return True
        if reason and reason[0] == "RUNNING":
            return False
        time.sleep(1)
    return False


def requeue_diagnosis(job: Path, job_id: str) -> str:
    """What SLURM and the task recorded, for a failed requeue test: every accounting record of
    the job (-D: both incarnations), the controller's and slurmd's last log lines, and the end
    of task 0's stdout (the requeued incarnation writes nothing to stderr when it runs)."""
    records = sh("sacct", "-j", job_id, "-D", "-P", "-o", "JobID,JobIDRaw,State,ExitCode,Start,End")
    parts = [f"\n--- sacct -D -j {job_id}\n{records.stdout}{records.stderr}"]
    for log in ("/var/log/slurm/slurmctld.log", "/var/log/slurm/slurmd.log"):
        if os.path.isfile(log):
            parts.append(f"--- {log}\n" + "".join(Path(log).read_text().splitlines(True)[-25:]))
    for out in sorted(job.parent.glob(".submitit/*_0/*_0_log.out")):
        parts.append(f"--- {out}\n" + "".join(out.read_text().splitlines(True)[-25:]))
    return "\n".join(parts)


def test_usr1_checkpoints_requeues_and_resumes_with_the_same_verdicts(slurm_cluster, tmp_path):
    """Two array tasks of one config (they differ only in the checkpoint interval, which does
    not touch the trajectory). Task 0 gets SIGUSR1 (what --signal sends before the time limit)
    while it trains: it checkpoints at the end of that step and is requeued; the task runs
    again in the same folder, resumes and completes. Its metrics and verdicts must equal those
    of task 1, which ran uninterrupted."""
    name = f"optprobe-test-{uuid.uuid4().hex[:8]}"
    max_steps = 300  # ~40 s with step probes on a loaded 2-core box; the signal comes early
    overrides = [
        "optimizer=adam",
        "debug=smoke",
        "probes=[step,noise]",
        "probes.noise.every_n_steps=7",
        "callbacks.checkpoint.every_n_steps=1000,1001",
        "data.max_train_samples=null",
        f"trainer.max_steps={max_steps}",
        "trainer.max_epochs=-1",
        "trainer.limit_val_batches=0",
    ]
    t0 = time.monotonic()
    launcher = subprocess.Popen(
        train_cmd(name, *overrides),
        cwd=ROOT,
        env=train_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        job, job_id = wait_until_task_zero_trains(launcher, tmp_path)
        assert sh("scancel", "--signal=USR1", job_id).returncode == 0
        print(f"\nSIGUSR1 sent to job {job_id} after {time.monotonic() - t0:.1f} s")
        wait_for_checkpoint_and_requeue(job, job_id)
        if start_requeued_job_now(job_id):
            print(f"requeued; start time reset after {time.monotonic() - t0:.1f} s")
        output, _ = launcher.communicate(timeout=900)
        print(f"launcher done after {time.monotonic() - t0:.1f} s")
    except BaseException:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        sh("scancel", f"--name={name}")  # nothing left queued when the test failed
        raise
    assert launcher.returncode == 0, output[-4000:] + requeue_diagnosis(job, job_id)
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed", summary.get("error")
    assert summary["global_step"] == max_steps
    assert summary["slurm_job_id"] == job_id  # the same job, requeued
    assert wait_for_states(job_id, "COMPLETED") == ["REQUEUED", "COMPLETED"]
    logs = "".join(p.read_text() for p in job.parent.glob(".submitit/*/*_log.err"))
    logs += "".join(p.read_text() for p in job.parent.glob(".submitit/*/*_log.out"))
    assert "preempted: saved" in logs and "requeued" in logs
    assert "Restored all states from the checkpoint" in logs

    twin = job.parent / "1"  # uninterrupted
    assert json.loads((twin / "summary.json").read_text())["status"] == "completed"
    a, b = probe_rows(twin), probe_rows(job)
    assert sorted(a, key=int) == sorted(b, key=int) == [str(i) for i in range(max_steps)]
    assert a == b  # every probe value of every step, as written
    verdicts = json.loads((job / "verdicts.json").read_text())
    assert verdicts == json.loads((twin / "verdicts.json").read_text())
    assert (
        summary["probes"]["step"]["held"]
        == json.loads((twin / "summary.json").read_text())["probes"]["step"]["held"]
    )
