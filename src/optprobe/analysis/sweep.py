"""Tidy tables of a sweep: one row per run (config, status, performance, verdicts,
constants, the stability ratio of :mod:`optprobe.analysis.stability`), the run-level
comparison per setting × optimizer × verdict entry, the study's findings, the
within-optimizer correlations of the pre-declared constants with performance, and of the same
constants measured early in each run with the final loss (:mod:`optprobe.analysis.early`).
Excluded runs (:mod:`optprobe.analysis.run_status`) are in the runs and verdicts
tables and nowhere else."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from optprobe.analysis.comparison import MIN_RUNS, comparison
from optprobe.analysis.correlations import correlation_note, correlations
from optprobe.analysis.early import (
    EARLY_FRACTION,
    EARLY_PREFIX,
    early_constants,
    early_prediction,
    prediction_sentences,
)
from optprobe.analysis.findings import findings_data, findings_lines
from optprobe.analysis.fits import slope_comparison
from optprobe.analysis.run_status import status_columns
from optprobe.analysis.runs import RunRecord
from optprobe.analysis.stability import stability_columns
from optprobe.analysis.verdict_keys import KEY_COLUMN, verdict_key
from optprobe.analysis.verdicts import verdict_from_metrics
from optprobe.assumptions import ASSUMPTIONS

PERFORMANCE = ("final_train_loss", "steps_to_target", "final_val_loss", "final_val_acc")
FINAL_WINDOW = 10  # final training loss = mean of the last this many logged steps


@dataclass
class SweepTables:
    """Everything the report shows: ``findings`` is findings.json's content,
    ``correlation_note`` the sentence on the correlations, ``early_prediction`` the early
    constants against the final loss and ``prediction_sentences`` its answer per optimizer."""

    runs: pd.DataFrame
    verdicts: pd.DataFrame
    correlations: pd.DataFrame
    comparison: pd.DataFrame
    histories: dict[str, pd.DataFrame]
    findings: dict[str, Any] = field(default_factory=dict)
    correlation_note: str = ""
    early_prediction: pd.DataFrame = field(default_factory=pd.DataFrame)
    prediction_sentences: list[str] = field(default_factory=list)

    @property
    def included(self) -> pd.DataFrame:
        """The runs the comparison, findings and correlations use."""
        if self.runs.empty or "included" not in self.runs:
            return self.runs
        return self.runs[self.runs["included"].astype(bool)]


def _choice(config: dict, group: str) -> str:
    """The option a run used for a config group (``optimizer`` -> ``adamw``)."""
    if f"choices.{group}" in config:
        return str(config[f"choices.{group}"])
    target = config.get(f"{group}._target_", "?")
    return str(target).rsplit(".", 1)[-1].lower()


def performance(history: pd.DataFrame, target_loss: float | None) -> dict[str, float]:
    """Final training loss (mean of the last ``FINAL_WINDOW`` logged steps), the first step at
    which a 10-step running mean of the training loss reaches ``target_loss`` (NaN if never),
    and the last validation loss and accuracy."""
    out = {k: math.nan for k in PERFORMANCE}
    if "train/loss" in history:
        loss = history[["step", "train/loss"]].dropna()
        if len(loss):
            out["final_train_loss"] = float(loss["train/loss"].tail(FINAL_WINDOW).mean())
            if target_loss is not None:
                smooth = loss["train/loss"].rolling(FINAL_WINDOW, min_periods=1).mean()
                reached = loss["step"][smooth.to_numpy() <= target_loss]
                out["steps_to_target"] = float(reached.iloc[0]) if len(reached) else math.nan
    for key, name in (("val/loss", "final_val_loss"), ("val/acc", "final_val_acc")):
        if key in history and history[key].notna().any():
            out[name] = float(history[key].dropna().iloc[-1])
    return out


def slope_columns(history: pd.DataFrame, quantile: float) -> dict[str, Any]:
    """Per fitted form with a slope term (registry ``fit`` with an x key): whether the line
    beats a constant-only fit out of sample on interleaved blocks (:mod:`.fits`):
    ``oos_gain:<id>`` (1 − pinball loss of the line / of the constant) and
    ``oos_beats_constant:<id>``."""
    out: dict[str, Any] = {}
    for a in ASSUMPTIONS.values():
        if a.fit is None or a.fit[0] is None:
            continue
        x_key, y_key, _ = a.fit
        if x_key not in history or y_key not in history:
            continue
        pairs = history[[x_key, y_key]].dropna()
        result = slope_comparison(pairs[x_key], pairs[y_key], quantile)
        if result.n_check:
            out[f"oos_gain:{a.id}"] = result.gain
            out[f"oos_beats_constant:{a.id}"] = result.beats_constant
    return out


def _run_row(rec: RunRecord) -> dict[str, Any]:
    cfg = rec.config
    row = {
        "run_id": rec.run_id,
        "source": rec.source,
        "status": rec.status,
        "optimizer": _choice(cfg, "optimizer"),
        "model": _choice(cfg, "model"),
        "data": _choice(cfg, "data"),
        "seed": cfg.get("seed"),
        "lr": cfg.get("optimizer.lr"),
        "weight_decay": cfg.get("optimizer.weight_decay"),
        "scheduler": _choice(cfg, "scheduler"),
        "location": rec.location,
    }
    row["setting"] = f"{row['model']}/{row['data']}"
    return row


def run_rows(
    records: list[RunRecord], quantile: float, early_fraction: float = EARLY_FRACTION
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs table (without steps_to_target; ``const_early:`` constants from the first
    ``early_fraction`` of each run) and the long verdicts table (one row per run and verdict
    entry, with the run's ``included``)."""
    rows, verdict_rows = [], []
    for rec in records:
        row = _run_row(rec)
        row.update(performance(rec.history, None))
        row.update(status_columns(rec, row["final_train_loss"]))
        verdict = verdict_from_metrics(rec.history, quantile=quantile)
        for a in verdict.assumptions:
            row[f"held:{verdict_key(a)}"] = a.fraction
            entry = {**a.__dict__, KEY_COLUMN: verdict_key(a), "base_assumption": a.assumption}
            verdict_rows.append({"run_id": rec.run_id, **entry, "included": row["included"]})
        row.update({f"const:{k}": v for k, v in verdict.constants.items()})
        early = early_constants(rec.history, quantile, early_fraction)
        row.update({f"{EARLY_PREFIX}{k}": v for k, v in early.items()})
        row.update(slope_columns(rec.history, quantile))
        row.update(stability_columns(rec.history, rec.summary))
        rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(verdict_rows)


def add_steps_to_target(runs: pd.DataFrame, records: list[RunRecord], target_loss: float | None):
    """``steps_to_target`` per run; the target defaults, per setting, to the median final
    training loss of that setting's included runs (so about half of them reach it)."""
    targets = {}
    for setting, group in runs.groupby("setting"):
        used = group[group["included"].astype(bool)]
        targets[setting] = (
            target_loss if target_loss is not None else float(used["final_train_loss"].median())
        )
    by_id = {r.run_id: r for r in records}
    runs["target_loss"] = runs["setting"].map(targets)
    runs["steps_to_target"] = [
        performance(by_id[rid].history, t)["steps_to_target"]
        for rid, t in zip(runs["run_id"], runs["target_loss"])
    ]


def build_tables(
    records: list[RunRecord],
    target_loss: float | None = None,
    quantile: float = 0.95,
    min_runs: int = MIN_RUNS,
    early_fraction: float = EARLY_FRACTION,
) -> SweepTables:
    """All tables of a sweep from its run records."""
    if not records:
        raise ValueError("no runs found: point the analysis at a sweep folder with job folders")
    runs, verdicts = run_rows(records, quantile, early_fraction)
    add_steps_to_target(runs, records, target_loss)
    comp = comparison(runs, verdicts, min_runs=min_runs)
    corr = correlations(runs)
    note = correlation_note(corr)
    early = early_prediction(runs)
    return SweepTables(
        runs=runs,
        verdicts=verdicts,
        correlations=corr,
        comparison=comp,
        histories={r.run_id: r.history for r in records},
        findings=findings_data(runs, comp, verdicts, note, min_runs=min_runs),
        correlation_note=note,
        early_prediction=early,
        prediction_sentences=prediction_sentences(runs, early, early_fraction),
    )


def findings(tables: SweepTables) -> list[str]:
    """The findings in words (one line per finding and setting × optimizer, then the
    excluded runs); see :mod:`optprobe.analysis.findings`."""
    return findings_lines(tables.findings) if tables.findings else []


def markdown_summary(tables: SweepTables, command: str = "") -> str:
    """The run-level comparison, the correlations that pass the correction and the findings
    as Markdown (report/summary.md)."""
    lines = [f"Produced by `{command}`.", ""] if command else []
    comp = tables.comparison
    if not comp.empty:
        lines += [
            "Mean over runs of the fraction of probed steps held, 95% t interval over runs "
            "(pooled steps for reference; label: held on most steps?).",
            "",
            "| setting | optimizer | assumption | runs | mean of run fractions | "
            "95% interval over runs | pooled steps | label |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in comp.itertuples():
            lines.append(
                f"| {r.setting} | {r.optimizer} | {r.assumption_label} | {r.runs} | "
                f"{_pct(r.mean_run_fraction)} | [{_pct(r.ci_low)}, {_pct(r.ci_high)}] | "
                f"{_pct(r.pooled_fraction)} | {r.label} |"
            )
        lines.append("")
    if tables.correlation_note:
        lines += [tables.correlation_note, ""]
    if tables.prediction_sentences:
        lines += ["Early constants against the final training loss:", ""]
        lines += [f"- {line}" for line in tables.prediction_sentences] + [""]
    lines += [f"- {line}" for line in findings(tables)]
    return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.0f}%"
