"""``optprobe-analyze <sweep folder>`` (or ``python -m optprobe.cli.analyze``): verdicts, correlations and the report.

Collects the runs of a sweep (the local run store by default, W&B offline run folders with
``--source wandb-offline``, or the W&B API with ``--source wandb --entity E --project P
--group G``), decides which runs to use (failed, unfinished, truncated, diverged... runs are
listed and left out), builds the tidy tables and writes ``<sweep>/report/`` (CSV tables,
findings.json, PNG figures and report.html; with ``--readme`` also findings.md, README's
reproduction text generated from findings.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from optprobe.analysis.comparison import MIN_RUNS
from optprobe.analysis.early import EARLY_FRACTION
from optprobe.analysis.findings import findings_markdown
from optprobe.analysis.report import FINDINGS_JSON, write_report
from optprobe.analysis.runs import load_local_runs, load_wandb_api_runs, load_wandb_offline_runs
from optprobe.analysis.sweep import SweepTables, build_tables, findings, markdown_summary
from optprobe.extras import MissingExtraError
from optprobe.log import say
from optprobe.run.sweep_table import format_table

SOURCES = ("local", "wandb-offline", "wandb")
FINDINGS_MD = "findings.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="optprobe-analyze", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", nargs="?", help="sweep folder (or any folder of job folders)")
    parser.add_argument("--source", choices=SOURCES, default="local")
    parser.add_argument("--entity", help="W&B entity (with --source wandb)")
    parser.add_argument("--project", default="optprobe", help="W&B project (--source wandb)")
    parser.add_argument("--group", help="W&B group = the sweep (--source wandb)")
    parser.add_argument("--out", help="report folder (default: <sweep>/report)")
    parser.add_argument(
        "--target-loss",
        type=float,
        help="training loss for steps_to_target (default: per setting, the median final loss)",
    )
    parser.add_argument(
        "--quantile", type=float, default=0.95, help="coverage of the fitted constants"
    )
    parser.add_argument(
        "--min-runs",
        type=int,
        default=MIN_RUNS,
        help=f"fewest included runs per setting and optimizer for a label (default {MIN_RUNS})",
    )
    parser.add_argument(
        "--early-fraction",
        type=float,
        default=EARLY_FRACTION,
        help="share of each run whose probed steps give the early constants (default "
        f"{EARLY_FRACTION}: the first {100 * EARLY_FRACTION:.0f}%%)",
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="also write report/findings.md: README's reproduction text, from findings.json",
    )
    args = parser.parse_args(argv)
    if args.source != "wandb" and not args.sweep:
        parser.error("give the sweep folder, e.g. logs/train/multiruns/<timestamp>")
    if args.source == "wandb" and not args.entity:
        parser.error("--source wandb needs --entity (and --project, --group)")
    if not 0 < args.quantile < 1:
        parser.error(f"--quantile must lie in (0, 1), got {args.quantile}")
    if not 0 < args.early_fraction <= 1:
        parser.error(f"--early-fraction must lie in (0, 1], got {args.early_fraction}")
    if args.min_runs < 2:
        parser.error(
            f"--min-runs must be at least 2 (a t interval needs 2 runs), got {args.min_runs}"
        )
    return args


def collect(args: argparse.Namespace):
    """The run records named by the command line."""
    if args.source == "wandb":
        return load_wandb_api_runs(args.entity, args.project, args.group)
    folder = Path(args.sweep)
    if not folder.is_dir():
        raise SystemExit(f"optprobe-analyze: {folder} is not a folder")
    loader = load_local_runs if args.source == "local" else load_wandb_offline_runs
    return loader(folder)


def print_summary(tables: SweepTables) -> None:
    """The run statuses, the run-level comparison, the correlations and the findings."""
    runs = tables.runs
    excluded = runs[~runs["included"].astype(bool)]
    say(f"runs: {len(runs)}, included: {len(runs) - len(excluded)}, excluded: {len(excluded)}")
    if len(excluded):
        say(format_table(excluded.to_dict("records"), ("run_id", "status", "exclusion_reason")))
    comp = tables.comparison
    if not comp.empty:
        say("\nMean over runs of the fraction of probed steps held (95% t interval over runs):")
        columns = ("setting", "optimizer", "assumption", "runs", "mean_run_fraction")
        say(format_table(comp.to_dict("records"), (*columns, "ci_low", "ci_high", "label")))
    say("\n" + tables.correlation_note)
    for line in tables.prediction_sentences:
        say(line)
    for line in findings(tables):
        say(line)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        records = collect(args)
    except MissingExtraError as err:  # --source wandb / wandb-offline without the [wandb] extra
        raise SystemExit(f"optprobe-analyze: {err}") from err
    if not records:
        raise SystemExit(
            f"optprobe-analyze: no runs found under {args.sweep} (source {args.source})"
        )
    say(f"collected {len(records)} runs ({args.source})")
    tables = build_tables(
        records,
        target_loss=args.target_loss,
        quantile=args.quantile,
        min_runs=args.min_runs,
        early_fraction=args.early_fraction,
    )
    out = Path(args.out) if args.out else Path(args.sweep or ".") / "report"
    report = write_report(
        out,
        tables.runs,
        tables.verdicts,
        tables.correlations,
        tables.comparison,
        tables.histories,
        title=f"optprobe report: {args.sweep or args.group}",
        notes=findings(tables),
        findings=tables.findings,
        early_prediction=tables.early_prediction,
        prediction_sentences=tables.prediction_sentences,
    )
    command = "optprobe-analyze " + " ".join(argv if argv is not None else sys.argv[1:])
    (report.parent / "summary.md").write_text(markdown_summary(tables, command))
    if args.readme:
        data = json.loads((report.parent / FINDINGS_JSON).read_text())
        (report.parent / FINDINGS_MD).write_text(findings_markdown(data, command))
        say(f"README text: {report.parent / FINDINGS_MD}")
    print_summary(tables)
    say(f"\nreport: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
