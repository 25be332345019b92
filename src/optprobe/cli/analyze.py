"""``optprobe-analyze <sweep folder>`` (or ``python -m optprobe.cli.analyze``): verdicts, correlations and the report.

Collects the runs of a sweep (the local run store by default, W&B offline run folders with
``--source wandb-offline``, or the W&B API with ``--source wandb --entity E --project P
--group G``), builds the tidy tables and writes ``<sweep>/report/`` (CSV tables, PNG figures
and report.html).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from optprobe.analysis.report import write_report
from optprobe.analysis.runs import load_local_runs, load_wandb_api_runs, load_wandb_offline_runs
from optprobe.analysis.sweep import (
    COMPARED,
    SweepTables,
    build_tables,
    findings,
    markdown_summary,
)
from optprobe.log import say
from optprobe.run.sweep_table import format_table

SOURCES = ("local", "wandb-offline", "wandb")


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
    args = parser.parse_args(argv)
    if args.source != "wandb" and not args.sweep:
        parser.error("give the sweep folder, e.g. logs/train/multiruns/<timestamp>")
    if args.source == "wandb" and not args.entity:
        parser.error("--source wandb needs --entity (and --project, --group)")
    if not 0 < args.quantile < 1:
        parser.error(f"--quantile must lie in (0, 1), got {args.quantile}")
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
    """The optimizer comparison and the strongest correlations, in the terminal."""
    comp = tables.comparison
    if not comp.empty:
        say("\nFraction of probed steps (pooled over runs):")
        say(format_table(comp.to_dict("records"), ("optimizer", "n_runs", *COMPARED)))
    corr = tables.correlations
    if not corr.empty:
        top = corr.reindex(corr["rho"].abs().sort_values(ascending=False).index).head(8)
        say("\nStrongest constant-performance rank correlations (95% bootstrap interval):")
        say(
            format_table(
                top.to_dict("records"),
                ("setting", "constant", "performance", "n", "rho", "ci_low", "ci_high"),
            )
        )
    for line in findings(tables):
        say(line)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    records = collect(args)
    if not records:
        raise SystemExit(
            f"optprobe-analyze: no runs found under {args.sweep} (source {args.source})"
        )
    say(f"collected {len(records)} runs ({args.source})")
    tables = build_tables(records, target_loss=args.target_loss, quantile=args.quantile)
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
    )
    command = "python -m optprobe.analyze " + " ".join(argv if argv is not None else sys.argv[1:])
    (report.parent / "summary.md").write_text(markdown_summary(tables, command))
    print_summary(tables)
    say(f"\nreport: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
