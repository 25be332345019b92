"""The W&B dashboard of a sweep as code: a saved workspace built with ``wandb-workspaces``.

Every panel comes from the assumptions registry and the probe families, never from a list
kept here: one section per probe family (``FAMILY_MAIN_KEYS``: ``step``, ``step_fresh``,
``curv``, ``noise``, ``ref``) with its keys over training steps and its verdicts, then the
held fractions against sharpness and the fitted constants against performance. Verdict
panels are bar charts of the run-summary values ``verdict/<id>`` (fraction of probed steps
held, 0..1) grouped by optimizer: the bar is the mean of the run fractions and the whisker
one standard error over runs (runs are the units, as in the report, whose 95% interval is
the Student-t one); the per-run Wilson intervals are the ``verdicts`` table. The runs are
grouped by optimizer (``choices.optimizer`` of the logged config) and each known run is
coloured by its setting (model/data).

Given the keys the runs logged (:class:`RunKeys`), a panel is kept only when every key it
names was logged by at least one run, so the dashboard names no key the runs lack.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from wandb_workspaces import expr

from optprobe.analysis.correlations import CONSTANTS
from optprobe.analysis.figures.ordering import optimizer_colors
from optprobe.analysis.run_constants import LAMBDA_MAX_KEY
from optprobe.analysis.verdicts import FAMILY_MAIN_KEYS
from optprobe.assumptions import Variant, all_variants, variants_logged_under

STEP_KEY = "trainer/global_step"  # the x axis: Lightning's optimizer step (W&B's _step differs)
OPTIMIZER = "choices.optimizer"  # config key of the optimizer's option name (sgdm, adamw...)
SETTING = ("choices.model", "choices.data")  # config keys that make a run's setting
VERDICTS_TABLE = "verdicts"  # the per-run W&B table of run/verdict.py
VERDICT_PREFIX = "verdict/"
CONST_PREFIX = "const/"
SHARPNESS = (f"{CONST_PREFIX}{LAMBDA_MAX_KEY.split('/')[1]}_max", LAMBDA_MAX_KEY)
"""Sharpness per run: the run's max of λ_max (a fitted constant), else its last λ_max."""
PERFORMANCE = ("train/loss", "val/loss", "val/acc")
"""Task metrics whose run-summary (last) value measures performance (as analysis.sweep)."""


@dataclass(frozen=True)
class RunKeys:
    """One W&B run as the dashboard needs it: id, group (the sweep), setting (model/data) and
    every key it logged (history and summary; a table by its own key)."""

    run_id: str
    group: str | None
    setting: str
    keys: frozenset[str]
    config_keys: frozenset[str] = frozenset()


def setting_of(flat_config: dict) -> str:
    """``mlp/digits`` from a flattened logged config (``?`` for a missing choice)."""
    return "/".join(str(flat_config.get(k, "?")) for k in SETTING)


def verdict_key(variant: Variant) -> str:
    """The run-summary key of a variant's held fraction."""
    return f"{VERDICT_PREFIX}{variant.id}"


def family_keys(family: str) -> list[str]:
    """The registry's keys of the variants a family logs (their inputs, the two sides of the
    inequality, the running fractions), then the family's main key."""
    keys: list[str] = []
    for v in variants_logged_under(family):
        a = v.assumption
        keys += [v.key(k) for k in v.inputs] + [v.key(k) for k in a.sides or ()]
        keys.append(v.running_key)
    return list(dict.fromkeys([*keys, FAMILY_MAIN_KEYS[family]]))


class _Keep:
    """Which keys a panel may name: all, or only those some run logged."""

    def __init__(self, logged: Iterable[str] | None) -> None:
        self.logged = None if logged is None else frozenset(logged)

    def all(self, *keys: str) -> bool:
        return self.logged is None or all(k in self.logged for k in keys)

    def first(self, keys: Sequence[str]) -> str | None:
        return next((k for k in keys if self.all(k)), None)

    def extra(self, family: str) -> list[str]:
        """Logged keys of a family that no assumption reads (all of ``curv``), its moving
        averages (``*_ema<decay>``) left out."""
        if self.logged is None:
            return []
        return sorted(k for k in self.logged if k.startswith(f"{family}/") and "_ema" not in k)


def _verdict_bar(variant: Variant) -> wr.BarPlot:
    return wr.BarPlot(
        title=f"held: {variant.label} (mean ± s.e. over runs)",
        metrics=[verdict_key(variant)],
        groupby=wr.Config(OPTIMIZER),
        groupby_aggfunc="mean",
        groupby_rangefunc="stderr",
        range_x=(0.0, 1.0),
    )


def _family_section(family: str, keep: _Keep) -> ws.Section | None:
    series = list(dict.fromkeys([*family_keys(family), *keep.extra(family)]))
    panels: list = [
        wr.LinePlot(title=k, x=STEP_KEY, y=[k]) for k in series if keep.all(STEP_KEY, k)
    ]
    panels += [_verdict_bar(v) for v in variants_logged_under(family) if keep.all(verdict_key(v))]
    return ws.Section(name=f"{family}/*", panels=panels, is_open=True) if panels else None


def _verdict_section(keep: _Keep) -> ws.Section | None:
    panels: list = [
        _verdict_bar(v) for v in all_variants() if v.headline and keep.all(verdict_key(v))
    ]
    if keep.all(VERDICTS_TABLE):
        panels.append(wr.WeavePanelSummaryTable(table_name=VERDICTS_TABLE))
    if not panels:
        return None
    return ws.Section(name="Verdicts by optimizer (headline)", panels=panels, is_open=True)


def _scatter(x: str, y: str, title: str) -> wr.ScatterPlot:
    return wr.ScatterPlot(title=title, x=wr.SummaryMetric(x), y=wr.SummaryMetric(y))


def _sharpness_section(keep: _Keep) -> ws.Section | None:
    sharp = keep.first(SHARPNESS)
    if sharp is None:
        return None
    panels = [
        _scatter(sharp, verdict_key(v), f"held: {v.label} vs {sharp}")
        for v in all_variants()
        if v.headline and keep.all(verdict_key(v))
    ]
    return ws.Section(name="Held fraction vs sharpness", panels=panels) if panels else None


def _constants_section(keep: _Keep) -> ws.Section | None:
    panels = [
        _scatter(f"{CONST_PREFIX}{c}", perf, f"{perf} (last) vs {CONST_PREFIX}{c}")
        for c in CONSTANTS
        for perf in PERFORMANCE
        if keep.all(f"{CONST_PREFIX}{c}", perf)
    ]
    return ws.Section(name="Constants vs performance", panels=panels) if panels else None


def _runset(group: str | None, runs: Sequence[RunKeys]) -> ws.RunsetSettings:
    colors = optimizer_colors(sorted({r.setting for r in runs}))
    return ws.RunsetSettings(
        filters=[expr.Metric("Group") == group] if group else "",
        groupby=[expr.Config(OPTIMIZER)],
        run_settings={r.run_id: ws.RunSettings(color=colors[r.setting]) for r in runs},
    )


def build_workspace(
    entity: str,
    project: str,
    group: str | None = None,
    runs: Sequence[RunKeys] | None = None,
) -> ws.Workspace:
    """The workspace of a sweep (W&B group ``group``; every run of the project when None).
    With ``runs``, only panels whose keys some run logged, and each run coloured by its
    setting; without, every panel the registry defines."""
    keep = _Keep(None if runs is None else (k for r in runs for k in r.keys))
    sections = [
        _verdict_section(keep),
        *(_family_section(f, keep) for f in FAMILY_MAIN_KEYS),
        _sharpness_section(keep),
        _constants_section(keep),
    ]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"optprobe: {group}" if group else "optprobe",
        sections=[s for s in sections if s is not None],
        runset_settings=_runset(group, runs or ()),
    )


def _name(metric) -> str:
    return metric if isinstance(metric, str) else metric.name


def panel_keys(workspace: ws.Workspace) -> tuple[set[str], set[str]]:
    """The metric keys (history or summary) and the config keys the workspace's panels and
    runset name."""
    metrics: set[str] = set()
    config = {g.name for g in workspace.runset_settings.groupby}
    for section in workspace.sections:
        for p in section.panels:
            if isinstance(p, wr.LinePlot):
                named = [p.x, *p.y]
            elif isinstance(p, wr.BarPlot):
                named = list(p.metrics)
            elif isinstance(p, wr.ScatterPlot):
                named = [p.x, p.y]
            elif isinstance(p, wr.WeavePanelSummaryTable):
                named = [p.table_name]
            else:
                raise TypeError(f"panel_keys does not know the panel type {type(p).__name__}")
            metrics |= {_name(m) for m in named if not isinstance(m, wr.Config)}
            config |= {m.name for m in named if isinstance(m, wr.Config)}
            if getattr(p, "groupby", None) is not None:
                config.add(_name(p.groupby))
    return metrics, config
