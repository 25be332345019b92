"""The stability ratio η·λ_max / threshold per run, its figure and its place in the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from frames import frame
from job_folders import metrics, write_job
from synthetic_sweep import check_png, make_sweep

from optprobe.analysis.figures.held_fractions import held_table, shown_keys
from optprobe.analysis.figures.stability import stability_figure
from optprobe.analysis.report import write_report
from optprobe.analysis.runs import load_local_runs
from optprobe.analysis.stability import (
    ABOVE,
    EXCLUDED,
    FIRINGS,
    MEDIAN,
    Q25,
    Q75,
    stability_columns,
    stability_ratios,
)
from optprobe.analysis.sweep import build_tables

NAN = math.nan
LION = "lion: the step is the sign of a momentum (not linear in g): no linear stability threshold"


def test_ratio_against_a_hand_computed_example():
    # firings at steps 0, 2, 4, 6, 8, 9; step 9 has an infinite threshold (heavy ball with
    # dampening 1) and is left out. Ratios: 0.5/2, 3/2, 7.6/3.8, 1.9/3.8, 0.2/2
    #   = 0.25, 1.5, 2.0, 0.5, 0.1 -> sorted 0.1, 0.25, 0.5, 1.5, 2.0
    h = frame(
        10,
        curv__sharpness_ratio=[0.5, NAN, 3.0, NAN, 7.6, NAN, 1.9, NAN, 0.2, 5.0],
        curv__stability_threshold=[2, NAN, 2, NAN, 3.8, NAN, 3.8, NAN, 2, math.inf],
    )
    np.testing.assert_allclose(stability_ratios(h), [0.25, 1.5, 2.0, 0.5, 0.1])
    cols = stability_columns(h)
    assert cols[MEDIAN] == pytest.approx(0.5)
    assert (cols[Q25], cols[Q75]) == pytest.approx((0.25, 1.5))
    assert cols[ABOVE] == pytest.approx(2 / 5)
    assert cols[FIRINGS] == 5 and cols[EXCLUDED] == ""


def test_undefined_threshold_is_left_out_with_the_reason():
    h = frame(4, curv__sharpness_ratio=[0.1, 0.2, 0.3, 0.4], curv__stability_threshold=[NAN] * 4)
    summary = {"probes": {"curvature": {"threshold_undefined": LION}}}
    cols = stability_columns(h, summary)
    assert math.isnan(cols[MEDIAN]) and math.isnan(cols[ABOVE]) and cols[FIRINGS] == 0
    assert LION in cols[EXCLUDED]
    assert "NaN on every firing" in stability_columns(h)[EXCLUDED]  # no summary: still a reason
    no_curvature = stability_columns(frame(4, train__loss=[1, 1, 1, 1]))
    assert "curv/sharpness_ratio not logged" in no_curvature[EXCLUDED]


def test_subsampled_curvature_is_left_out_with_the_reason():
    """η·λ_max on a random subset of the batch is not the ratio of the step's batch."""
    columns = dict(curv__sharpness_ratio=[0.5, 3.0], curv__stability_threshold=[2.0, 2.0])
    assert stability_columns(frame(2, **columns))[FIRINGS] == 2
    cols = stability_columns(frame(2, **columns, curv__hvp_examples=[8.0, 8.0]))
    assert math.isnan(cols[MEDIAN]) and cols[FIRINGS] == 0
    assert "subset of the batch" in cols[EXCLUDED] and "hvp_examples" in cols[EXCLUDED]


def test_runs_table_carries_the_ratio_and_leaves_lion_out(tmp_path):
    """Through job folders and build_tables: runs.csv columns per run."""
    base = {"curv/sharpness_ratio": np.r_[4.0, [NAN] * 39]}
    for i, (opt, threshold) in enumerate((("sgd", 2.0), ("lion", NAN))):
        table = metrics(seed=i).assign(**base, **{"curv/stability_threshold": threshold})
        summary = {"probes": {"curvature": {"threshold_undefined": LION}}} if opt == "lion" else {}
        write_job(tmp_path / str(i), optimizer=opt, seed=i, table=table, summary=summary)
    runs = build_tables(load_local_runs(tmp_path)).runs.set_index("optimizer")
    assert runs.loc["sgd", MEDIAN] == pytest.approx(2.0) and runs.loc["sgd", ABOVE] == 1.0
    assert math.isnan(runs.loc["lion", MEDIAN]) and LION in runs.loc["lion", EXCLUDED]


def _sweep_with_ratios():
    """The synthetic sweep (3 optimizers x 3 seeds) with known ratios; adamw seed 2 has no
    threshold."""
    sweep = make_sweep(optimizers=("sgd", "sgdm", "adamw"), steps=40)
    runs = sweep["runs"]
    runs[MEDIAN] = np.geomspace(0.05, 20, len(runs))
    runs[Q25], runs[Q75] = runs[MEDIAN] / 2, runs[MEDIAN] * 2
    runs[EXCLUDED] = ""
    lion_like = runs["run_id"] == "adamw-resnet18-s2"
    runs.loc[lion_like, [MEDIAN, Q25, Q75]] = NAN
    runs.loc[lion_like, EXCLUDED] = f"no stability threshold ({LION})"
    return sweep


def test_figure_panels_and_points():
    sweep = _sweep_with_ratios()
    fig = stability_figure(sweep["verdicts"], sweep["runs"])
    keys = shown_keys(held_table(sweep["verdicts"], sweep["runs"]))
    assert len(keys) >= 3
    axes = fig.axes
    assert len(axes) == len(keys) * 3  # one row per headline key, one column per optimizer
    titles = [ax.get_title() for ax in axes[:3]]
    assert titles == ["adamw", "sgd", "sgdm"]
    for ax, opt in zip(axes, ["adamw", "sgd", "sgdm"] * len(keys)):
        (points,) = ax.collections[:1]
        assert len(points.get_offsets()) == (2 if opt == "adamw" else 3)  # adamw s2 left out
        assert ax.get_xscale() == "log"
        assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.get_lines())
    x = sorted(axes[1].collections[0].get_offsets()[:, 0])
    expected = sweep["runs"].loc[sweep["runs"]["optimizer"] == "sgd", MEDIAN]
    np.testing.assert_allclose(x, sorted(expected))
    assert LION in fig.get_supxlabel().replace("\n", " ")


def test_report_shows_the_figure_only_with_the_keys(tmp_path):
    sweep = _sweep_with_ratios()
    path = write_report(tmp_path / "with", **sweep)
    check_png(tmp_path / "with" / "stability.png")
    html = path.read_text(encoding="utf-8")
    assert 'id="stability"' in html and "edge of stability" in html
    assert "effective sample size" in html.split('id="stability"')[1].split("</section>")[0]
    plain = make_sweep(optimizers=("sgd",), steps=40)
    path = write_report(tmp_path / "without", **plain)
    assert not (tmp_path / "without" / "stability.png").exists()
    assert 'id="stability"' not in path.read_text(encoding="utf-8")
