"""``optprobe-dashboard --entity E --project P --group <sweep>`` (or ``python -m
optprobe.cli.dashboard``): the sweep's W&B workspace, created or updated from code.

Reads which keys the runs logged (the W&B API, or the run folders under ``--runs`` for
offline runs), builds the workspace (:mod:`optprobe.analysis.dashboard`) and writes its
specification to ``--out`` (``dashboard.json``). With W&B credentials and a reachable server
it saves the workspace and prints its URL; otherwise it says why and how to apply the file
later: ``optprobe-dashboard --apply dashboard.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from optprobe.extras import MissingExtraError, require
from optprobe.log import say, warn

DEFAULT_OUT = "dashboard.json"
DESCRIPTION = (
    "Create or update the W&B workspace of a sweep; without a W&B server, write its "
    "specification to a file to apply later with --apply."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="optprobe-dashboard", description=DESCRIPTION)
    parser.add_argument("--entity", help="W&B entity (user or team) that owns the project")
    parser.add_argument("--project", default="optprobe", help="W&B project (default optprobe)")
    parser.add_argument("--group", help="W&B group = the sweep (default: every run)")
    parser.add_argument(
        "--runs",
        help="folder holding W&B run folders (offline-run-*): read the logged keys there "
        "instead of from the server",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"spec file (default {DEFAULT_OUT})")
    parser.add_argument(
        "--apply", metavar="SPEC", help="save a spec file written earlier to the W&B server"
    )
    parser.add_argument(
        "--offline", action="store_true", help="only write the spec file, do not contact W&B"
    )
    args = parser.parse_args(argv)
    if not args.apply and not args.entity:
        parser.error("give the W&B entity: --entity <user or team> (and --project, --group)")
    if args.runs and not Path(args.runs).is_dir():
        parser.error(f"--runs {args.runs} is not a folder")
    return args


def why_offline() -> str | None:
    """Why the W&B server cannot be used now (``WANDB_MODE``, no credentials, unreachable),
    or None."""
    from optprobe.run.wandb_setup import unusable_reason

    mode = os.environ.get("WANDB_MODE")
    return f"WANDB_MODE={mode}" if mode in ("offline", "disabled") else unusable_reason()


def apply_later_hint(path: Path, reason: str) -> str:
    return (
        f"W&B: {reason}; the dashboard is not saved. Its specification is in {path}: "
        f"apply it later with `optprobe-dashboard --apply {path}`."
    )


def apply(path: str) -> int:
    """Save a spec file to the server (``--apply``)."""
    from optprobe.analysis.dashboard_spec import read_spec, save

    try:
        workspace = read_spec(path)
    except ValueError as err:
        raise SystemExit(f"optprobe-dashboard: {err}") from err
    reason = why_offline()
    if reason:
        raise SystemExit(f"optprobe-dashboard: cannot apply {path}: {reason}")
    say(f"W&B dashboard saved: {save(workspace)}")
    return 0


def read_api_runs(entity: str, project: str, group: str | None):
    """The runs through the W&B API; a clear exit when the server refuses (no such project,
    no access)."""
    errors = require("wandb.errors", "optprobe-dashboard")

    from optprobe.analysis.dashboard_spec import api_runs

    try:
        return api_runs(entity, project, group)
    except (ValueError, errors.CommError, errors.AuthenticationError) as err:
        raise SystemExit(
            f"optprobe-dashboard: cannot read the runs of {entity}/{project} from W&B: {err} "
            "(check --entity and --project; --runs <folder> reads offline runs instead)"
        ) from err


def build(args: argparse.Namespace) -> int:
    """Build the workspace, write its spec, and save it when the server can be used."""
    from optprobe.analysis.dashboard import build_workspace
    from optprobe.analysis.dashboard_spec import offline_runs, save, write_spec

    reason = "--offline" if args.offline else why_offline()
    if args.runs:
        runs = offline_runs(args.runs, args.group)
        source = args.runs
    elif reason is None:
        source = f"{args.entity}/{args.project}"
        runs = read_api_runs(args.entity, args.project, args.group)
    else:
        runs, source = None, None
    if runs == []:
        group = f" of group {args.group!r}" if args.group else ""
        raise SystemExit(f"optprobe-dashboard: no W&B runs{group} in {source}")
    if runs is None:
        warn(
            "optprobe-dashboard: no runs to read the logged keys from (give --runs <sweep "
            "folder> for offline runs): every panel the registry defines is included."
        )
    else:
        say(f"Logged keys of {len(runs)} run(s) from {source}.")
    workspace = build_workspace(args.entity, args.project, args.group, runs)
    path = write_spec(workspace, args.out)
    panels = sum(len(s.panels) for s in workspace.sections)
    say(f"Dashboard: {len(workspace.sections)} sections, {panels} panels -> {path}")
    if reason:
        warn(apply_later_hint(path, reason))
        return 0
    say(f"W&B dashboard saved: {save(workspace)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # the workspace model and the W&B client: the [wandb] extra
        require("wandb_workspaces", "optprobe-dashboard")
        require("wandb", "optprobe-dashboard")
    except MissingExtraError as err:
        raise SystemExit(f"optprobe-dashboard: {err}") from err
    return apply(args.apply) if args.apply else build(args)


if __name__ == "__main__":
    sys.exit(main())
