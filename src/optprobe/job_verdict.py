"""At the end of a job: the verdict table from its metrics, printed, saved, sent to W&B."""

from __future__ import annotations

import json
from pathlib import Path

from optprobe.analysis.verdicts import RunVerdict, read_metrics_csv, verdict_from_metrics

VERDICT_FILE = "verdicts.json"


def write_job_verdict(
    output_dir: str | Path, loggers: list, quantile: float = 0.95
) -> RunVerdict | None:
    """Compute the verdict from ``<output_dir>/metrics.csv``; write ``verdicts.json`` and log
    it to W&B (summary values ``verdict/<assumption>`` and ``const/<name>``, table
    ``verdicts``). Returns None when the job has no metrics.csv or no probe keys."""
    path = Path(output_dir) / "metrics.csv"
    if not path.is_file():
        return None
    verdict = verdict_from_metrics(read_metrics_csv(path), quantile=quantile)
    if not verdict.assumptions and not verdict.constants:
        return None
    (Path(output_dir) / VERDICT_FILE).write_text(json.dumps(verdict.to_dict(), indent=2))
    for logger in loggers:
        log_verdict_to_wandb(logger, verdict)
    return verdict


def log_verdict_to_wandb(logger, verdict: RunVerdict) -> None:
    """Verdicts and constants as W&B run-summary values (sortable in the runs table) and the
    per-assumption rows as a W&B table."""
    from pytorch_lightning.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return
    summary = {f"verdict/{a.assumption}": a.fraction for a in verdict.assumptions}
    summary.update({f"const/{k}": v for k, v in verdict.constants.items()})
    summary.update({f"skipped/{k}": v for k, v in verdict.skipped.items()})
    logger.experiment.summary.update(summary)
    columns = ["assumption", "label", "held", "checked", "fraction", "ci_low", "ci_high"]
    rows = [[getattr(a, c) for c in columns] for a in verdict.assumptions]
    logger.log_table(key="verdicts", columns=columns, data=rows)
