"""W&B never blocks a run: no credentials or an unreachable server -> offline, with a warning;
a job keeps one W&B run across resumes."""

from __future__ import annotations

import os
import re
import socket

import pytest
from job_harness import run_train

from optprobe.analysis.wandb_offline import offline_run_dirs, read_wandb_run
from optprobe.run.wandb_setup import job_run_id, resolve_mode, server_reachable, wandb_logger

pytestmark = pytest.mark.timeout(120)  # a hang fails the test instead of stalling the tier


@pytest.fixture
def listening_url():
    """http://127.0.0.1:<port> of a socket that accepts connections."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture
def closed_url():
    """http://127.0.0.1:<port> where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    return monkeypatch


def test_server_reachable_tells_open_from_closed_ports(listening_url, closed_url):
    assert server_reachable(listening_url)
    assert not server_reachable(closed_url)


@pytest.mark.parametrize("mode", ["auto", "online"])
def test_credentials_and_reachable_server_stay_online(wandb_env, listening_url, mode):
    wandb_env.setenv("WANDB_API_KEY", "x" * 40)
    wandb_env.setenv("WANDB_BASE_URL", listening_url)
    assert resolve_mode(mode) == "online"


@pytest.mark.parametrize("mode", ["auto", "online"])
def test_unreachable_server_falls_back_to_offline(wandb_env, closed_url, mode, capsys):
    wandb_env.setenv("WANDB_API_KEY", "x" * 40)
    wandb_env.setenv("WANDB_BASE_URL", closed_url)
    assert resolve_mode(mode) == "offline"
    assert re.search("unreachable.*logging offline", capsys.readouterr().out)


def test_not_logged_in_falls_back_to_offline(wandb_env, capsys):
    assert resolve_mode("online") == "offline"
    assert "no credentials" in capsys.readouterr().out


def test_explicit_offline_and_disabled_are_kept(wandb_env):
    wandb_env.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline"


def test_run_with_unreachable_server_completes_offline(tmp_path, closed_url):
    out = run_train(
        ["logger=wandb", "debug=smoke", "probes=none"],
        tmp_path,
        env_extra={"HOME": str(tmp_path), "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": closed_url},
        timeout=110,
        without_wandb_env=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "unreachable" in out.stdout and "logging offline" in out.stdout
    runs = offline_run_dirs(tmp_path)
    assert len(runs) == 1
    assert len([h for h in read_wandb_run(runs[0]).history if "train/loss" in h]) == 6


def test_run_id_follows_the_job_folder(wandb_env, tmp_path):
    wandb_env.setenv("WANDB_MODE", "offline")
    first = wandb_logger(save_dir=str(tmp_path / "job"))
    again = wandb_logger(save_dir=str(tmp_path / "job"))  # the job resumed in its folder
    other = wandb_logger(save_dir=str(tmp_path / "other"))
    assert first.version == again.version == job_run_id(str(tmp_path / "job"))
    assert other.version != first.version
    wandb_env.setenv("WANDB_RUN_ID", "chosen-by-hand")
    assert wandb_logger(save_dir=str(tmp_path / "job")).version == "chosen-by-hand"
