"""The dashboard's runs, its specification file, and saving it to a W&B server.

The specification is the workspace's view as W&B stores it (``wandb-workspaces``' own
``internal.View`` model, JSON by alias), so writing it needs no server and applying it later
validates it against the library's models again. A dashboard is saved under a view name
determined by entity, project and title: applying it again updates that view.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import wandb_workspaces.workspaces as ws
from pydantic import ValidationError
from wandb_workspaces.workspaces import internal

from optprobe.analysis.dashboard import RunKeys, setting_of
from optprobe.analysis.runs import flatten
from optprobe.analysis.wandb_offline import offline_run_dirs, read_wandb_run
from optprobe.extras import require

TABLE_SUFFIX = "._type"  # a logged table reads back as its fields: "verdicts._type", ...


def logged_keys(keys: Iterable[str]) -> frozenset[str]:
    """Metric keys of a run's history and summary: internal ``_`` keys left out, a table or
    other media object by its own key (not the fields it reads back as)."""
    keys = set(keys)
    objects = {k.removesuffix(TABLE_SUFFIX) for k in keys if k.endswith(TABLE_SUFFIX)}
    fields = {k for k in keys for o in objects if k.startswith(f"{o}.")}
    return frozenset(k for k in keys - fields if not k.startswith("_")) | objects


def run_keys(run_id: str, group: str | None, config: dict, keys: Iterable[str]) -> RunKeys:
    """A run's dashboard record from its logged config (nested) and metric keys."""
    flat = flatten({k: v for k, v in config.items() if not k.startswith("_")})
    return RunKeys(run_id, group, setting_of(flat), logged_keys(keys), frozenset(flat))


def offline_runs(root: str | Path, group: str | None = None) -> list[RunKeys]:
    """The W&B run folders under ``root`` (offline or synced), of one group when given."""
    runs = []
    for run_dir in offline_run_dirs(root):
        rec = read_wandb_run(run_dir)
        if group is None or rec.group == group:
            keys = [*rec.summary, *(k for row in rec.history for k in row)]
            runs.append(run_keys(rec.run_id or run_dir.name, rec.group, rec.config, keys))
    return runs


def api_runs(entity: str, project: str, group: str | None) -> list[RunKeys]:
    """The runs of a W&B project (one group when given) through the public API: summary keys
    (every history key has its last value there) and config keys."""
    wandb = require("wandb", "reading runs through the W&B API")

    filters = {"group": group} if group else {}
    return [
        run_keys(run.id, run.group, run.config, run.summary.keys())
        for run in wandb.Api().runs(f"{entity}/{project}", filters=filters)
    ]


def spec(workspace: ws.Workspace) -> dict[str, Any]:
    """The workspace as the view W&B stores (JSON-ready)."""
    return workspace._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


def from_spec(data: dict[str, Any]) -> ws.Workspace:
    """A workspace from a specification; a ValueError naming the problem when the library's
    models reject it."""
    try:
        view = internal.View.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(
            f"not a W&B workspace specification ({err.error_count()} problems; first: "
            f"{where}: {first['msg']})"
        ) from err
    return ws.Workspace._from_model(view)


def write_spec(workspace: ws.Workspace, path: str | Path) -> Path:
    """Write the specification to ``path`` (JSON); returns the path."""
    path = Path(path)
    path.write_text(json.dumps(spec(workspace), indent=1) + "\n")
    return path


def read_spec(path: str | Path) -> ws.Workspace:
    """The workspace of a specification file written by :func:`write_spec`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the dashboard specification {path}: {err}") from err
    return from_spec(data)


def view_name(workspace: ws.Workspace) -> str:
    """The W&B view name of a dashboard (``nw-<11 hex digits>-v``), the same for the same
    entity, project and title, so that saving again updates the view."""
    ident = f"{workspace.entity}/{workspace.project}/{workspace.name}"
    return f"nw-{hashlib.sha256(ident.encode()).hexdigest()[:11]}-v"


def save(workspace: ws.Workspace) -> str:
    """Create or update the workspace's view on the W&B server; returns its URL."""
    name = view_name(workspace)
    try:
        existing = internal.View.from_name(workspace.entity, workspace.project, name)
        workspace._internal_id = existing.id
    except ValueError:  # "Workspace ... not found": a new view under that name
        workspace._internal_id = ""
    workspace._internal_name = name
    workspace.save()
    return workspace.url
