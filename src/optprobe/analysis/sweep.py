"""Tidy tables of a sweep: one row per run (config, performance, verdicts, constants), the
rank correlation of every fitted constant with performance, and the optimizer comparison."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from optprobe.analysis.runs import RunRecord
from optprobe.analysis.stats import spearman_with_ci, wilson_interval
from optprobe.analysis.verdicts import verdict_from_metrics
from optprobe.assumptions import ASSUMPTIONS

PERFORMANCE = ("final_train_loss", "steps_to_target", "final_val_loss", "final_val_acc")
# the study's comparison: does the smoothness analysis predict the progress, do the convexity
# identities hold (column of the comparison table -> assumption id; labels from the registry)
COMPARED = {
    "smoothness_predicts": "descent_bound",
    "convexity_holds": "inst_gap",
    "convexity_old_holds": "inst_gap_old",
    "ref_convexity_holds": "ref_gap",
}
MIN_RUNS = 5  # fewer runs give no usable rank correlation or bootstrap interval
FINAL_WINDOW = 10  # final training loss = mean of the last this many logged steps


@dataclass
class SweepTables:
    """Everything the report shows."""

    runs: pd.DataFrame
    verdicts: pd.DataFrame
    correlations: pd.DataFrame
    comparison: pd.DataFrame
    histories: dict[str, pd.DataFrame]


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


def run_rows(records: list[RunRecord], quantile: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs table (without steps_to_target) and the long verdicts table."""
    rows, verdict_rows = [], []
    for rec in records:
        cfg = rec.config
        verdict = verdict_from_metrics(rec.history, quantile=quantile)
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
        row.update(performance(rec.history, None))
        for a in verdict.assumptions:
            row[f"held:{a.assumption}"] = a.fraction
            verdict_rows.append({"run_id": rec.run_id, **a.__dict__})
        row.update({f"const:{k}": v for k, v in verdict.constants.items()})
        rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(verdict_rows)


def add_steps_to_target(runs: pd.DataFrame, records: list[RunRecord], target_loss: float | None):
    """``steps_to_target`` per run; the target defaults, per setting, to the median final
    training loss of that setting's runs (so about half of the runs reach it)."""
    targets = {}
    for setting, group in runs.groupby("setting"):
        targets[setting] = (
            target_loss if target_loss is not None else float(group["final_train_loss"].median())
        )
    by_id = {r.run_id: r for r in records}
    runs["target_loss"] = runs["setting"].map(targets)
    runs["steps_to_target"] = [
        performance(by_id[rid].history, t)["steps_to_target"]
        for rid, t in zip(runs["run_id"], runs["target_loss"])
    ]


def correlations(runs: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Spearman correlation (with a bootstrap 95% interval over runs) between every fitted
    constant and every performance measure, within each setting (model/data)."""
    rows = []
    constants = [c for c in runs.columns if c.startswith("const:")]
    for setting, group in runs.groupby("setting"):
        for const in constants:
            for perf in PERFORMANCE:
                x, y = group[const].to_numpy(float), group[perf].to_numpy(float)
                keep = np.isfinite(x) & np.isfinite(y)
                if keep.sum() < MIN_RUNS:
                    continue
                res = spearman_with_ci(x[keep], y[keep], n_resamples=n_resamples, seed=seed)
                rows.append(
                    {
                        "setting": setting,
                        "constant": const.removeprefix("const:"),
                        "performance": perf,
                        "n": res.n,
                        "rho": res.rho,
                        "ci_low": res.low,
                        "ci_high": res.high,
                        "pvalue": res.pvalue,
                    }
                )
    return pd.DataFrame(rows)


def comparison(runs: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per setting and optimizer: the fraction of all probed steps (pooled over its runs) on
    which the smoothness analysis predicted the progress and the convexity identities held,
    with Wilson 95% intervals."""
    if verdicts.empty:
        return pd.DataFrame()
    merged = verdicts.merge(runs[["run_id", "setting", "optimizer"]], on="run_id")
    several = runs["setting"].nunique() > 1
    rows = []
    for (setting, optimizer), group in merged.groupby(["setting", "optimizer"]):
        row = {
            "optimizer": f"{setting}: {optimizer}" if several else optimizer,
            "setting": setting,
            "n_runs": int(group["run_id"].nunique()),
        }
        for column, assumption in COMPARED.items():
            sub = group[group["assumption"] == assumption]
            held, checked = int(sub["held"].sum()), int(sub["checked"].sum())
            low, high = wilson_interval(held, checked)
            row[column] = held / checked if checked else math.nan
            row[f"{column}_low"], row[f"{column}_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def build_tables(
    records: list[RunRecord], target_loss: float | None = None, quantile: float = 0.95
) -> SweepTables:
    """All tables of a sweep from its run records."""
    if not records:
        raise ValueError("no runs found: point the analysis at a sweep folder with job folders")
    runs, verdicts = run_rows(records, quantile)
    add_steps_to_target(runs, records, target_loss)
    return SweepTables(
        runs=runs,
        verdicts=verdicts,
        correlations=correlations(runs),
        comparison=comparison(runs, verdicts),
        histories={r.run_id: r.history for r in records},
    )


CONVEX_MODELS = ("logreg", "logisticregression")  # the convex sanity case, not a finding


def findings(tables: SweepTables) -> list[str]:
    """Whether this sweep supports the study's two headline findings, judged on every
    (setting, optimizer) pair except the convex sanity case (logistic regression)."""
    comp = tables.comparison
    if comp.empty:
        return []
    models = comp["setting"].str.split("/").str[0]
    deep = comp[~models.isin(CONVEX_MODELS)]
    out = []
    if len(deep) < len(comp):
        sanity = comp[models.isin(CONVEX_MODELS)]
        out.append(
            "Sanity check (convex logistic regression): convexity along the step held on "
            + ", ".join(f"{_pct(v)}" for v in sanity["convexity_holds"])
            + " of probed steps."
        )
    if deep.empty:
        return out
    fails = deep[deep["smoothness_predicts"] < 0.5]
    holds = deep[deep["convexity_holds"] > 0.5]
    out.append(
        "Finding 1, smoothness analyses fail to predict the progress on most steps: "
        f"{'supported' if len(fails) == len(deep) else 'partly supported' if len(fails) else 'not supported'}"
        f" ({len(fails)} of {len(deep)} setting/optimizer pairs; L-smoothness predicted the "
        "progress on "
        + ", ".join(f"{_pct(r.smoothness_predicts)} ({r.optimizer})" for r in deep.itertuples())
        + " of probed steps)."
    )
    out.append(
        "Finding 2, the convexity identity along the step holds on most steps: "
        f"{'supported' if len(holds) == len(deep) else 'partly supported' if len(holds) else 'not supported'}"
        f" ({len(holds)} of {len(deep)} pairs; it held on "
        + ", ".join(f"{_pct(r.convexity_holds)} ({r.optimizer})" for r in deep.itertuples())
        + ")."
    )
    return out


def markdown_summary(tables: SweepTables, command: str = "") -> str:
    """The comparison, the strongest correlations and the findings as Markdown (report/summary.md)."""
    lines = []
    if command:
        lines += [f"Produced by `{command}`.", ""]
    comp = tables.comparison
    if not comp.empty:
        labels = [ASSUMPTIONS[a].label for a in COMPARED.values()]
        lines += [
            "| " + " | ".join(["setting: optimizer", "runs", *labels]) + " |",
            "|---" * (2 + len(labels)) + "|",
        ]
        for _, r in comp.iterrows():
            cells = [
                f"{_pct(r[c])} [{_pct(r[c + '_low'])}, {_pct(r[c + '_high'])}]" for c in COMPARED
            ]
            lines.append(f"| {r['optimizer']} | {r['n_runs']} | " + " | ".join(cells) + " |")
        lines.append("")
    corr = (
        tables.correlations.dropna(subset=["rho"])
        if not tables.correlations.empty
        else tables.correlations
    )
    if not corr.empty:
        top = corr.reindex(corr["rho"].abs().sort_values(ascending=False).index).head(10)
        robust = int(((corr["ci_low"] > 0) | (corr["ci_high"] < 0)).sum())
        lines += [
            f"Constant vs performance, Spearman ρ with 95% bootstrap interval ({robust} of "
            f"{len(corr)} intervals exclude 0; the 10 largest |ρ|):",
            "",
            "| setting | constant | performance | n | ρ | 95% interval |",
            "|---|---|---|---|---|---|",
        ]
        for r in top.itertuples():
            lines.append(
                f"| {r.setting} | {r.constant} | {r.performance} | {r.n} | {r.rho:.2f} | "
                f"[{r.ci_low:.2f}, {r.ci_high:.2f}] |"
            )
        lines.append("")
    lines += [f"- {line}" for line in findings(tables)]
    return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.0f}%"
