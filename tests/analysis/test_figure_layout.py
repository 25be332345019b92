"""What a reader sees in the figures: panels that hold exactly the runs their statistic is
about, tick labels that do not overprint, a legend that covers no panel, bars named by
optimizer and seed."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from job_folders import write_sweep
from scipy.stats import spearmanr
from synthetic_sweep import make_sweep

from optprobe.analysis.correlations import CONSTANTS, correlations
from optprobe.analysis.figures.constants import constants_figure
from optprobe.analysis.figures.held_fractions import held_fractions_figure
from optprobe.analysis.runs import load_local_runs
from optprobe.analysis.sweep import build_tables
from optprobe.assumptions import all_variants

SETTINGS = ("logreg/digits", "cnn/mnist5k", "gpt/shakespeare")


@pytest.fixture(scope="module")
def three_settings():
    return make_sweep(settings=SETTINGS, steps=20)


def overlapping(boxes: list) -> list[tuple[int, int]]:
    """Index pairs of display-space boxes that overlap (by more than a pixel)."""
    return [
        (i, j)
        for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2)
        if min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1
    ]


def tick_label_clashes(fig) -> list[str]:
    """For every axes, the x tick labels (major and minor, shown, non-empty) that overlap one
    another."""
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    clashes = []
    for ax in fig.axes:
        ticks = ax.get_xticklabels() + ax.get_xticklabels(minor=True)
        labels = [t for t in ticks if t.get_visible() and t.get_text()]
        inside = [
            t for t in labels if min(ax.get_xlim()) <= t.get_position()[0] <= max(ax.get_xlim())
        ]
        boxes = [t.get_window_extent(renderer) for t in inside]
        clashes += [
            f"{inside[i].get_text()} / {inside[j].get_text()}" for i, j in overlapping(boxes)
        ]
    return clashes


def scatter_points(ax) -> set[tuple[float, float]]:
    return {
        (round(float(x), 9), round(float(y), 9))
        for coll in ax.collections
        for x, y in coll.get_offsets()
    }


def test_constants_one_panel_per_setting_optimizer_and_constant(three_settings):
    """18 runs in 3 settings: every panel holds exactly the 3 runs of its setting × optimizer,
    says n = 3, and its ρ is scipy's Spearman on those points."""
    runs = three_settings["runs"]
    fig = constants_figure(runs, three_settings["correlations"])
    shown = [c for c in CONSTANTS if f"const:{c}" in runs.columns]
    groups = sorted(set(zip(runs["setting"], runs["optimizer"])))
    assert len(groups) == 6 and len(fig.axes) == len(groups) * len(shown)
    for k, ((setting, opt), const) in enumerate(itertools.product(groups, shown)):
        ax = fig.axes[k]
        group = runs[(runs["setting"] == setting) & (runs["optimizer"] == opt)]
        x = group[f"const:{const}"].to_numpy(float)
        y = group["final_train_loss"].to_numpy(float)
        assert scatter_points(ax) == {(round(a, 9), round(b, 9)) for a, b in zip(x, y)}
        rho = spearmanr(x, y).statistic
        assert ax.get_title().startswith(f"{const}: ρ = {rho:.2f}, n = 3"), ax.get_title()
        if k % len(shown) == 0:  # the row names its setting and optimizer
            assert ax.get_ylabel().split("\n")[:2] == [setting, opt]


def labelled_ticks(ax) -> int:
    lo, hi = sorted(ax.get_xlim())
    ticks = ax.get_xticklabels() + ax.get_xticklabels(minor=True)
    return sum(1 for t in ticks if t.get_text() and lo <= t.get_position()[0] <= hi)


@pytest.mark.parametrize(
    ("values", "min_ticks"),
    [
        (np.linspace(1.0, 1.05, 6), 2),  # narrow: a log axis labelled 1.01×10⁰ ... overprinted
        (1.0 + np.linspace(0, 1e-12, 6), 1),  # equal up to rounding: one tick
        (np.linspace(4.95, 4.99, 6), 2),
        (1.0 + np.linspace(0, 1e-7, 6), 2),  # tiny but real differences
        (np.geomspace(0.2, 4.0, 6), 2),  # a decade and a bit: one log tick would be all
        (np.geomspace(1e-3, 1e4, 6), 2),  # seven decades
        (np.linspace(-3.0, 2.0, 6), 2),  # signed
        (np.linspace(12345.0, 12346.0, 6), 2),
    ],
)
def test_constant_tick_labels_never_overprint(values, min_ticks):
    sw = make_sweep(seeds=(0, 1, 2), steps=10, constants=())
    runs = sw["runs"]
    for c in CONSTANTS:
        runs[f"const:{c}"] = values
    fig = constants_figure(runs, correlations(runs))
    assert tick_label_clashes(fig) == []
    assert min(labelled_ticks(ax) for ax in fig.axes) >= min_ticks


def test_small_sweep_says_once_why_there_is_no_rho():
    sw = make_sweep(seeds=(0, 1), steps=10)
    fig = constants_figure(sw["runs"], sw["correlations"])
    assert sw["correlations"].empty
    assert "no ρ: no setting × optimizer has 3 runs" in fig.get_suptitle()
    titles = [ax.get_title() for ax in fig.axes]
    assert titles and all(t.endswith(": n = 2") for t in titles), titles
    tied = make_sweep(seeds=(0, 1, 2), steps=10)["runs"].assign(final_train_loss=0.5)
    fig = constants_figure(tied, correlations(tied))
    assert "no ρ in correlations.csv for these runs: tied values" in fig.get_suptitle()


@pytest.fixture(scope="module")
def job_tables(tmp_path_factory):
    """The tables of six hand-written job folders (real verdict keys with variants)."""
    root = write_sweep(tmp_path_factory.mktemp("jobs"))
    return build_tables(load_local_runs(root))


def test_held_fractions_shows_headline_verdicts_in_registry_order(job_tables):
    fig = held_fractions_figure(job_tables.verdicts, job_tables.runs)
    headline = [v.id for v in all_variants() if v.headline]
    keys = list(dict.fromkeys(job_tables.verdicts["assumption"]))
    expected = [k for k in headline if k in keys]
    assert len(expected) < len(keys)  # the other variants are left to verdicts.csv
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.rsplit("(", 1)[1].rstrip(")") for t in titles] == expected


def test_held_fractions_bars_named_by_optimizer_and_seed_legend_off_the_panels(job_tables):
    runs = job_tables.runs
    fig = held_fractions_figure(job_tables.verdicts, runs)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_title()]
    expected = [f"{o} s{s}" for o, s in sorted(zip(runs["optimizer"], runs["seed"].astype(int)))]
    for ax in panels:
        assert [t.get_text() for t in ax.get_xticklabels()] == expected
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    for ax in panels:
        assert not overlapping([box, ax.get_window_extent(renderer)]), ax.get_title()
    assert not overlapping([box, fig._suptitle.get_window_extent(renderer)])
    assert tick_label_clashes(fig) == []


def test_held_fractions_names_runs_apart_when_optimizer_and_seed_repeat(three_settings):
    """Three settings: the setting goes in front; two runs alike get their run id."""
    runs = three_settings["runs"]
    fig = held_fractions_figure(three_settings["verdicts"], runs)
    names = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(names) == 18 and len(set(names)) == 18
    assert "cnn/mnist5k adamw s0" in names and "logreg/digits sgdm s2" in names
    twin = pd.concat([runs.iloc[:1], runs.iloc[:1].assign(run_id="copy")], ignore_index=True)
    fig = held_fractions_figure(three_settings["verdicts"], twin)
    names = [t.get_text() for t in fig.axes[0].get_xticklabels()][:2]
    assert sorted(names) == ["sgdm s0 (copy)", "sgdm s0 (sgdm-logreg-s0)"]
