"""The study's two findings per setting × optimizer (findings.json), judged on run-level
intervals, and the Markdown generated from it (report/findings.md, README's reproduction text).

Which verdict entries bear on a finding comes from the registry (``Assumption.finding``; a
variant inherits its base assumption's). Each entry gets a label for the finding's claim from
its run-level interval (:func:`optprobe.analysis.comparison.interval_label`). The finding's
label for a setting × optimizer is the conjunction of its *deciding* entries (headline
variants of the sign checks, and for inst_gap its informative score beside the valid one): ``not supported`` if any deciding entry is not supported,
``supported`` if all are, else ``insufficient runs`` if any lacks runs, else
``inconclusive``. A pair with fewer included runs than the minimum is ``insufficient runs``
whatever its entries say; ``not measured`` when no run checked a deciding entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from optprobe.analysis.comparison import (
    CONFIDENCE,
    INCONCLUSIVE,
    INSUFFICIENT,
    INTERVAL,
    MIN_RUNS,
    NOT_SUPPORTED,
    SUPPORTED,
    THRESHOLD,
    interval_label,
    run_fractions,
)
from optprobe.analysis.verdict_keys import KEY_COLUMN, base_assumption, decides

__all__ = [
    "CONVEX_MODELS",
    "FINDINGS",
    "NOT_MEASURED",
    "Finding",
    "combine",
    "deciding",
    "findings_data",
    "findings_lines",
    "findings_markdown",
]

NOT_MEASURED = "not measured"
CONVEX_MODELS = ("logreg", "logisticregression")  # the convex sanity case, not evidence
SCHEMA = 1


@dataclass(frozen=True)
class Finding:
    """One of the study's headline claims about the verdict entries whose registry
    ``finding`` is ``key``: they held on more (``above``) or fewer than ``THRESHOLD`` of the
    probed steps."""

    number: int
    key: str
    claim: str
    above: bool


FINDINGS: tuple[Finding, ...] = (
    Finding(
        1, "smoothness", "smoothness analyses fail to predict the progress on most steps", False
    ),
    Finding(2, "convexity", "the convexity identities hold on most steps", True),
)


def combine(labels: Sequence[str]) -> str:
    """A finding's label from its deciding entries' labels (see the module docstring)."""
    if not labels:
        return NOT_MEASURED
    if NOT_SUPPORTED in labels:
        return NOT_SUPPORTED
    if all(label == SUPPORTED for label in labels):
        return SUPPORTED
    return INSUFFICIENT if INSUFFICIENT in labels else INCONCLUSIVE


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def deciding(key: str) -> bool:
    """Whether a verdict entry decides its finding's label: a deciding variant
    (``Variant.decides``: the headline, and for the convexity identities the headline's
    informative score beside the valid one) of a sign check that is independent evidence
    (fitted forms, other variants and near-duplicates such as inst_gap_old, registry
    ``duplicates``, are reported, not deciding)."""
    base = base_assumption(key)
    independent = base is not None and base.duplicates is None
    return independent and base.kind == "sign" and decides(key)


def _entry(row: Mapping, finding: Finding, min_runs: int, fractions: list[float]) -> dict:
    runs = int(row["runs"])
    low, high = _num(row["ci_low"]), _num(row["ci_high"])
    label = interval_label(
        math.nan if low is None else low,
        math.nan if high is None else high,
        runs,
        min_runs,
        above=finding.above,
    )
    return {
        "assumption": str(row[KEY_COLUMN]),
        "assumption_label": str(row["assumption_label"]),
        "deciding": deciding(str(row[KEY_COLUMN])),
        "runs": runs,
        "mean_run_fraction": _num(row["mean_run_fraction"]),
        "ci_low": low,
        "ci_high": high,
        "run_fractions": [round(f, 6) for f in fractions],
        "pooled_held": int(row["pooled_held"]),
        "pooled_checked": int(row["pooled_checked"]),
        "pooled_fraction": _num(row["pooled_fraction"]),
        "label": label,
    }


def _pair_finding(finding, rows, pair, min_runs, fractions_of) -> dict:
    entries = [
        _entry(r, finding, min_runs, fractions_of(str(r[KEY_COLUMN])))
        for _, r in rows[rows["finding"] == finding.key].iterrows()
    ]
    included = int(pair["included"].sum())
    if included < min_runs:
        label = INSUFFICIENT
        reason = f"{included} included run(s) of {len(pair)}; at least {min_runs} needed"
    else:
        decisive = [e["label"] for e in entries if e["deciding"]]
        label = combine(decisive)
        reason = (
            f"conjunction of {len(decisive)} deciding entries"
            if decisive
            else ("no deciding entry was measured")
        )
    return {"label": label, "reason": reason, "entries": entries}


def _excluded(runs: pd.DataFrame) -> list[dict]:
    out = runs[~runs["included"].astype(bool)]
    cols = ("run_id", "setting", "optimizer", "exclusion_reason", "exclusion_detail")
    return [{c: str(r.get(c, "")) for c in cols} for _, r in out.iterrows()]


def _group(setting, optimizer, pair, comparison, verdicts, min_runs: int) -> dict[str, Any]:
    """One setting × optimizer of findings.json: its runs and each finding's label."""
    rows = comparison[(comparison["setting"] == setting) & (comparison["optimizer"] == optimizer)]
    used = list(pair.loc[pair["included"].astype(bool), "run_id"])

    def fractions_of(key: str) -> list[float]:
        return [float(f) for f in run_fractions(verdicts, used, key)]

    return {
        "setting": str(setting),
        "optimizer": str(optimizer),
        "role": "sanity check" if str(setting).split("/")[0] in CONVEX_MODELS else "evidence",
        "runs_total": len(pair),
        "runs_included": len(used),
        "findings": {
            str(f.number): _pair_finding(f, rows, pair, min_runs, fractions_of) for f in FINDINGS
        },
    }


def findings_data(
    runs: pd.DataFrame,
    comparison: pd.DataFrame,
    verdicts: pd.DataFrame,
    correlation_note: str = "",
    min_runs: int = MIN_RUNS,
) -> dict[str, Any]:
    """findings.json: the rules, the runs used and excluded, and per finding and setting ×
    optimizer (every pair with a run, included or not) the label and its entries."""
    groups = [
        _group(setting, optimizer, pair, comparison, verdicts, min_runs)
        for (setting, optimizer), pair in runs.groupby(["setting", "optimizer"], sort=True)
    ]
    return {
        "schema": SCHEMA,
        "rules": _rules(min_runs),
        "runs": {
            "total": len(runs),
            "included": int(runs["included"].sum()) if len(runs) else 0,
            "excluded": _excluded(runs) if len(runs) else [],
        },
        "findings": [_finding_summary(f, groups) for f in FINDINGS],
        "groups": groups,
        "correlations": correlation_note,
    }


def _rules(min_runs: int) -> dict[str, Any]:
    return {
        "threshold": THRESHOLD,
        "confidence": CONFIDENCE,
        "min_runs": min_runs,
        "interval": INTERVAL + " (mean ± t_{n-1} s/√n, clipped to [0, 1])",
        "entry_label": "supported / not supported when the interval lies wholly on the claim's "
        "side of the threshold / the other side; inconclusive when it straddles it; "
        f"insufficient runs below {min_runs} runs",
        "finding_label": "conjunction of the deciding entries (headline variants of the sign "
        "checks): not supported if any is, supported if all are",
        "pooled": "pooled_* count the probed steps of all included runs together: shown, "
        "never used as an interval (steps are autocorrelated)",
    }


def _finding_summary(finding: Finding, groups: list[dict]) -> dict[str, Any]:
    evidence = [g for g in groups if g["role"] == "evidence"]
    labels = [g["findings"][str(finding.number)]["label"] for g in evidence]
    return {
        "number": finding.number,
        "key": finding.key,
        "claim": finding.claim,
        "direction": "above" if finding.above else "below",
        "pairs": len(evidence),
        "labels": {label: labels.count(label) for label in dict.fromkeys(labels)},
    }


# --------------------------------------------------------------------------- words


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def entry_text(e: Mapping[str, Any]) -> str:
    """``<label>: 29% [20–38%] over 5 runs (pooled steps 29%)``."""
    interval = f" [{_pct(e['ci_low'])}–{_pct(e['ci_high'])}]" if e.get("ci_low") is not None else ""
    return (
        f"{e['assumption_label']}: {_pct(e['mean_run_fraction'])}{interval} over "
        f"{e['runs']} run{'s' if e['runs'] != 1 else ''} (pooled steps {_pct(e['pooled_fraction'])})"
    )


def findings_lines(data: Mapping[str, Any]) -> list[str]:
    """One line per finding and setting × optimizer, then the excluded runs."""
    lines = []
    for finding in data["findings"]:
        n = str(finding["number"])
        for g in data["groups"]:
            f = g["findings"][n]
            head = f"Finding {n} ({finding['claim']}), {g['setting']} {g['optimizer']}"
            if g["role"] != "evidence":
                head += " [sanity check]"
            deciding = [entry_text(e) for e in f["entries"] if e["deciding"]]
            detail = "; ".join(deciding) if f["label"] != INSUFFICIENT else f["reason"]
            lines.append(f"{head}: {f['label']}" + (f" ({detail})." if detail else "."))
    excluded = data["runs"]["excluded"]
    if excluded:
        listed = ", ".join(f"{r['run_id']} ({r['exclusion_reason']})" for r in excluded)
        lines.append(
            f"Excluded runs: {len(excluded)} of {data['runs']['total']}, in no finding, "
            f"comparison or correlation: {listed}."
        )
    return lines


def _md_excluded(data: Mapping[str, Any]) -> list[str]:
    runs = data["runs"]
    text = f"Runs: {runs['total']}, of which {runs['included']} included."
    if runs["excluded"]:
        listed = "; ".join(
            f"`{r['run_id']}` ({r['setting']} {r['optimizer']}): {r['exclusion_reason']}"
            for r in runs["excluded"]
        )
        text += f" Excluded (in no finding, comparison or correlation): {listed}."
    return [text, ""]


def _md_finding(finding: Mapping[str, Any], groups: list[dict]) -> list[str]:
    n = str(finding["number"])
    counts = ", ".join(f"{label} in {k}" for label, k in finding["labels"].items())
    lines = [
        f"**Finding {n}: {finding['claim']}.** {counts or 'no setting'} of "
        f"{finding['pairs']} setting/optimizer pair(s) (the convex sanity check aside).",
        "",
        "| setting | optimizer | runs | finding | evidence | mean of run fractions "
        "[95% t interval over runs] | pooled steps | entry |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        f = g["findings"][n]
        name = g["setting"] + (" (sanity check)" if g["role"] != "evidence" else "")
        head = f"| {name} | {g['optimizer']} | {g['runs_included']}/{g['runs_total']} | "
        head += f"**{f['label']}** |"
        entries = f["entries"] or [None]
        for i, e in enumerate(entries):
            lead = head if i == 0 else "| | | | |"
            if e is None:
                lines.append(f"{lead} {f['reason']} | | | |")
                continue
            interval = (
                f" [{_pct(e['ci_low'])}, {_pct(e['ci_high'])}]" if e["ci_low"] is not None else ""
            )
            mark = "" if e["deciding"] else " (not deciding)"
            lines.append(
                f"{lead} {e['assumption_label']}{mark} | {_pct(e['mean_run_fraction'])}"
                f"{interval} | {_pct(e['pooled_fraction'])} ({e['pooled_held']}/"
                f"{e['pooled_checked']}) | {e['label']} |"
            )
    return [*lines, ""]


def findings_markdown(data: Mapping[str, Any], command: str = "") -> str:
    """README's reproduction text, generated from findings.json (``data``) alone."""
    rules = data["rules"]
    lines = [
        "<!-- generated from report/findings.json by `optprobe-analyze <sweep> --readme`; "
        "do not edit by hand -->",
    ]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    lines += _md_excluded(data)
    lines += [
        f"Each entry: the mean over runs of the fraction of probed steps on which it held, "
        f"with the {rules['interval']}; a label needs at least {rules['min_runs']} included "
        f"runs. Threshold: {_pct(rules['threshold'])} of probed steps. A finding is the "
        "conjunction of its deciding entries. Pooled steps are shown for reference only.",
        "",
    ]
    for finding in data["findings"]:
        lines += _md_finding(finding, data["groups"])
    if data.get("correlations"):
        lines += [f"Constants against performance: {data['correlations']}", ""]
    return "\n".join(lines)
