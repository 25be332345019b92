"""At the end of a job: its verdicts from the metrics it logged, saved and sent to W&B."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from pytorch_lightning.loggers import Logger, WandbLogger

from optprobe.analysis.verdicts import RunVerdict, verdict_from_metrics
from optprobe.run.folder import JobFolder

TABLE_COLUMNS = (
    "id",
    "assumption",
    "label",
    "held",
    "checked",
    "fraction",
    "ci_low",
    "ci_high",
    "interval_method",
    "no_progress",
    "sum_lhs",
    "sum_rhs",
    "sum_held",
    "null_fraction",
    "informative",
)
"""Columns of the W&B ``verdicts`` table (plus ``variant``, its axis values as JSON)."""


def verdict_payload(verdict: RunVerdict, coverage: dict[str, Any] | None) -> dict[str, Any]:
    """What ``verdicts.json`` (and the summary's ``verdicts``) hold: the verdict, and the
    ``coverage`` (which probes ran on which steps) of a job resumed with other probes."""
    payload = verdict.to_dict()
    if coverage is not None:
        payload["coverage"] = coverage
    return payload


def job_verdict(
    metrics: pd.DataFrame,
    folder: JobFolder,
    loggers: list[Logger],
    quantile: float = 0.95,
    coverage: dict[str, Any] | None = None,
) -> RunVerdict | None:
    """The verdict of a job's logged ``metrics`` (one row per step); written to
    ``verdicts.json`` (with ``coverage`` when given) and logged to W&B (summary values
    ``verdict/<id>`` for every variant id, ``const/<name>``, ``skipped/<family>`` and the
    table ``verdicts``). None, and a stale verdicts.json removed, when the job logged no
    probe key."""
    verdict = verdict_from_metrics(metrics, quantile=quantile)
    if not verdict.assumptions and not verdict.constants:
        folder.write_verdicts(None)
        return None
    folder.write_verdicts(verdict_payload(verdict, coverage))
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            log_verdict_to_wandb(logger, verdict)
    return verdict


def log_verdict_to_wandb(logger: WandbLogger, verdict: RunVerdict) -> None:
    """Verdicts and constants as W&B run-summary values (sortable in the runs table) and one
    row per verdict id as a W&B table."""
    summary = {f"verdict/{a.id}": a.fraction for a in verdict.assumptions}
    summary.update({f"const/{k}": v for k, v in verdict.constants.items()})
    summary.update({f"skipped/{k}": v for k, v in verdict.skipped.items()})
    logger.experiment.summary.update(summary)
    columns = [*TABLE_COLUMNS, "variant"]
    rows = [
        [*(getattr(a, c) for c in TABLE_COLUMNS), json.dumps(a.variant)]
        for a in verdict.assumptions
    ]
    logger.log_table(key="verdicts", columns=columns, data=rows)
