"""A job folder belongs to one run, a sweep folder to one sweep; a second writer is locked out
(optprobe.run.ownership, optprobe.run.locks, the Hydra callback OutputDirCheck)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from job_harness import folder_bytes
from omegaconf import OmegaConf

from optprobe.run import locks
from optprobe.run.folder import JobFolder
from optprobe.run.hydra_callbacks import OutputDirCheck
from optprobe.run.job import train
from optprobe.run.locks import FolderInUseError
from optprobe.run.ownership import FolderTakenError, check_job_folder_free, claim_sweep_folder

SMOKE = ["debug=smoke", "probes=none"]


def test_new_run_into_a_folder_with_results_is_refused_and_changes_nothing(make_cfg):
    first = make_cfg([*SMOKE, "optimizer=sgd"], name="job")
    train(first)
    job = Path(first.paths.output_dir)
    before = folder_bytes(job)
    with pytest.raises(FolderTakenError) as err:
        train(make_cfg([*SMOKE, "optimizer=adam", "trainer.max_steps=4"], name="job"))
    message = str(err.value)
    assert f"job folder {job} already holds the results of another run" in message
    assert f"ckpt_path={job}/checkpoints/last.ckpt" in message  # the fix: resume it ...
    assert "drop hydra.run.dir=" in message  # ... or a fresh folder
    assert folder_bytes(job) == before  # nothing written, nothing mixed


def test_checkpoint_of_another_folder_does_not_open_a_taken_folder(make_cfg):
    donor = make_cfg(SMOKE, name="donor")
    train(donor)
    train(make_cfg(SMOKE, name="job"))
    ckpt = Path(donor.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(FolderTakenError, match="is not one of its checkpoints"):
        train(make_cfg([*SMOKE, "trainer.max_steps=8", f"ckpt_path={ckpt}"], name="job"))


def write_job(folder: Path, slurm_job_id: str | None) -> JobFolder:
    job = JobFolder(folder)
    folder.mkdir(parents=True)
    job.write_summary({"status": "running", "slurm_job_id": slurm_job_id})
    (folder / "hpc_ckpt_1.ckpt").write_bytes(b"")
    return job


def test_the_same_slurm_job_requeued_continues_its_folder(tmp_path, monkeypatch):
    job = write_job(tmp_path / "job", slurm_job_id="77")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    check_job_folder_free(job, None)  # the requeued task: allowed
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(FolderTakenError, match="summary.json, hpc_ckpt_1.ckpt"):
        check_job_folder_free(job, None)
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(FolderTakenError):
        check_job_folder_free(job, None)
    check_job_folder_free(job, str(job.path / "hpc_ckpt_1.ckpt"))  # resuming by hand: allowed


def test_sweep_and_run_folders_never_take_each_other(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep_summary.csv").write_text("job\n")
    with pytest.raises(FolderTakenError, match="sweep_summary.csv"):
        check_job_folder_free(JobFolder(sweep), None)  # a run into a sweep folder
    run = write_job(tmp_path / "run", slurm_job_id=None)
    with pytest.raises(FolderTakenError, match="already holds another sweep or run .summary.json"):
        claim_sweep_folder(run.path)  # a sweep into a run's folder
    assert not locks.holds(run.lock)  # refused: nothing held


def test_fresh_folder_with_only_hydra_records_is_free(tmp_path):
    (tmp_path / "job" / ".hydra").mkdir(parents=True)
    (tmp_path / "job" / "train.log").write_text("")
    check_job_folder_free(JobFolder(tmp_path / "job"), None)


HOLD = textwrap.dedent(
    """
    import sys, time
    from optprobe.run import locks
    locks.acquire(sys.argv[1], "test")
    print("locked", flush=True)
    time.sleep(120)
    """
)


def hold_lock(lock_file: Path) -> subprocess.Popen:
    """Another process that holds ``lock_file`` (until killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_file)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_folder_held_by_another_process_fails_fast_naming_it(make_cfg, tmp_path):
    cfg = make_cfg(SMOKE, name="job")
    job = JobFolder(cfg.paths.output_dir)
    holder = hold_lock(job.lock)
    try:
        with pytest.raises(FolderInUseError) as err:
            train(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert f"job folder {job.path} is in use by another optprobe run: pid {holder.pid}" in str(
        err.value
    )
    assert not job.summary.exists()
    train(cfg)  # the holder is gone: the lock went with it
    assert json.loads(job.summary.read_text())["status"] == "completed"


def hydra_config(sweep: Path, launcher: str = "BasicLauncher"):
    return OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(sweep)}, "launcher": {"_target_": f"x.{launcher}"}}}
    )


def test_sweep_into_a_folder_of_another_sweep_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    JobFolder(sweep / "0").path.mkdir(parents=True)
    JobFolder(sweep / "0").write_summary({"status": "completed"})
    (sweep / "sweep_summary.csv").write_text("job\n0\n")
    with pytest.raises(SystemExit) as err:
        OutputDirCheck().on_multirun_start(hydra_config(sweep))
    assert f"sweep folder {sweep} already holds another sweep or run" in str(err.value)
    assert "job folder 0" in str(err.value) and "sweep_summary.csv" in str(err.value)
    assert "Drop hydra.sweep.dir=" in str(err.value)


def test_sweep_folder_is_held_until_the_sweep_ends(tmp_path):
    sweep = tmp_path / "sweep"
    callback = OutputDirCheck()
    callback.on_multirun_start(hydra_config(sweep))
    holder = subprocess.run(  # another process now: refused
        [sys.executable, "-c", HOLD, str(JobFolder(sweep).lock)], capture_output=True, text=True
    )
    assert holder.returncode != 0 and "FolderInUseError" in holder.stderr
    callback.on_multirun_end(hydra_config(sweep))
    again = hold_lock(JobFolder(sweep).lock)  # released: another process gets it
    again.kill()
    again.wait()


def test_slurm_sweep_without_slurm_is_one_line_naming_the_local_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, srun, sinfo, sacct
    with pytest.raises(SystemExit) as err:
        OutputDirCheck().on_multirun_start(hydra_config(tmp_path / "s", "SlurmLauncher"))
    message = str(err.value)
    assert "\n" not in message and "not on PATH" in message
    assert "slurm/start_cluster.sh" in message
    assert not (tmp_path / "s").exists()  # stopped before any folder was made


def test_writability_checks_of_one_folder_at_once_do_not_collide(tmp_path):
    """Two runs started together check the same folder: each check writes and removes a test
    file of its own, so neither fails on the other's removal (it must reach the lock instead)."""
    from concurrent.futures import ThreadPoolExecutor

    from optprobe.run.folder import make_writable_dir

    folder = tmp_path / "job"
    with ThreadPoolExecutor(max_workers=8) as pool:
        errors = [
            f.exception() for f in [pool.submit(make_writable_dir, folder) for _ in range(400)]
        ]
    assert [e for e in errors if e is not None] == []
    assert list(folder.iterdir()) == []  # no test file left behind
