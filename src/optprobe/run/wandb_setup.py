"""Weights & Biases run identity (group = the sweep, name = the overrides) and offline fallback."""

from __future__ import annotations

import hashlib
import netrc
import os
import socket
from collections.abc import Sequence
from urllib.parse import urlparse

from pytorch_lightning.loggers import WandbLogger

from optprobe.extras import check_installed
from optprobe.log import warn
from optprobe.run.hydra_context import hydra_identity

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"
REACH_TIMEOUT_S = 5.0  # seconds to wait for a TCP connection to the W&B server


def has_wandb_credentials() -> bool:
    """True when an API key is in ``WANDB_API_KEY`` or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)).hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def server_reachable(base_url: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    """True when a TCP connection to the W&B server of ``base_url`` opens within ``timeout``
    seconds (a closed port, no route or no DNS answer is False)."""
    url = urlparse(base_url)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            return True
    except OSError:
        return False


def unusable_reason() -> str | None:
    """Why the W&B server cannot be used now: no credentials, or no connection to it within
    ``REACH_TIMEOUT_S`` seconds; None when it can."""
    if not has_wandb_credentials():
        return "no credentials found (WANDB_API_KEY or `wandb login`)"
    base_url = os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)
    if not server_reachable(base_url):
        return f"the server {base_url} is unreachable (no connection within {REACH_TIMEOUT_S:g} s)"
    return None


def resolve_mode(mode: str) -> str:
    """The W&B mode to use: ``auto`` honours ``WANDB_MODE``, else online only with credentials.

    An online run without credentials would prompt for a key (or hang without a terminal), and
    one whose server does not answer retries for minutes, so both fall back to offline with a
    warning (also for an explicit ``online``); ``wandb sync`` uploads the run later.
    """
    if mode not in MODES:
        raise ValueError(f"logger.wandb.mode={mode!r} is unknown; use one of {MODES}")
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or "online"
    if mode != "online":
        return mode
    reason = unusable_reason()
    if reason is None:
        return "online"
    warn(
        f"W&B: {reason}; logging offline. "
        "Upload later with `wandb sync <job folder>/wandb/offline-run-*`."
    )
    return "offline"


def run_name(overrides: Sequence[str]) -> str:
    """Run name from Hydra's task overrides without the seed, e.g. ``optimizer=adam,model=mlp``."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith("seed=")]
    return ",".join(kept) or "defaults"


def job_run_id(job_dir: str) -> str:
    """A W&B run id (16 lowercase hex digits) determined by the absolute job folder."""
    return hashlib.sha256(os.path.abspath(job_dir).encode()).hexdigest()[:16]


def wandb_logger(
    save_dir: str,
    project: str = "optprobe",
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    mode: str = "auto",
) -> WandbLogger:
    """A Lightning ``WandbLogger`` whose group is the Hydra sweep and whose name is the overrides.

    The run id comes from the job folder (or ``WANDB_RUN_ID``), so a job that resumes in its
    folder (a SLURM requeue, ``ckpt_path=``) continues its W&B run instead of starting another.
    Without wandb installed: a :class:`~optprobe.extras.MissingExtraError` naming the extra.
    """
    check_installed("wandb", "logger=wandb")
    sweep_group, overrides = hydra_identity()
    logger = WandbLogger(
        save_dir=save_dir,
        id=os.environ.get("WANDB_RUN_ID") or job_run_id(save_dir),
        project=project,
        entity=entity,
        group=group or sweep_group,
        name=name or run_name(overrides),
        tags=list(tags),
        mode=resolve_mode(mode),
    )
    # Lightning always passes anonymous=None, which W&B warns has no effect: leave it out
    logger._wandb_init.pop("anonymous", None)
    return logger
