"""Lightning messages that say nothing about an optprobe job, each silenced at its source.

Lightning offers no argument for three of them, so each gets a filter that matches that one
message from that one module (every other warning and log line still shows):

- the litlogger tip, logged by ``Trainer`` whenever no ``LitLogger`` is attached;
- the "`srun` is available but not used" hint, warned whenever an ``srun`` binary is on PATH
  outside an ``srun`` step (optprobe starts its own DDP ranks; slurm/ shows the SLURM way);
- the ``LeafSpec`` deprecation, warned by Lightning's own pytree copy on every ``fit`` with
  newer torch (``pytorch_lightning.utilities._pytree`` constructs ``LeafSpec()``).

The others are silenced by the arguments optprobe passes: ``weights_only=False`` when saving
and resuming its own checkpoints (``callbacks.checkpoints``, ``run.job``), and no
``anonymous`` setting for W&B (``run.wandb_setup``).
"""

from __future__ import annotations

import logging
import warnings

LITLOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking"
RANK_ZERO_LOGGER = "pytorch_lightning.utilities.rank_zero"


class _DropLitLoggerTip(logging.Filter):
    """Drops the one record that advertises litlogger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LITLOGGER_TIP)


def quiet_lightning() -> None:
    """Install the three narrow filters above (idempotent)."""
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
        logger.addFilter(_DropLitLoggerTip())
    warnings.filterwarnings(
        "ignore",
        message="The `srun` command is available on your system but is not used",
        module=r"lightning_fabric\.plugins\.environments\.slurm",
    )
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"pytorch_lightning\.utilities\._pytree",
    )
