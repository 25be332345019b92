"""The figures on their own: paths, degraded inputs, no pyplot, titles from the registry."""

from __future__ import annotations

import importlib
import pkgutil

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from synthetic_sweep import check_png, make_sweep

from optprobe.analysis import figures
from optprobe.analysis.figures.comparison import INTERVALS
from optprobe.analysis.figures.trajectories import (
    DEFAULT_TRAJECTORY_KEYS,
    SIGN_CHECKS,
    held_on_rows,
    panel_title,
)
from optprobe.assumptions import ASSUMPTIONS


@pytest.fixture(scope="module")
def sweep():
    return make_sweep(steps=60)


def draw_every_figure(sweep: dict, folder) -> list:
    return [
        figures.plot_optimizer_comparison(sweep["comparison"], folder / "comparison.png"),
        figures.plot_held_fractions(sweep["verdicts"], sweep["runs"], folder / "held.png"),
        figures.plot_trajectories(sweep["histories"], sweep["runs"], folder / "traj.png"),
        figures.plot_constant_vs_performance(
            sweep["runs"], sweep["correlations"], folder / "c.png"
        ),
        figures.plot_trajectories({}, None, folder / "no_data.png"),
    ]


def test_plot_functions_return_paths_and_degrade(tmp_path, sweep):
    p = figures.plot_held_fractions(sweep["verdicts"], sweep["runs"], tmp_path / "a" / "held.png")
    assert p == tmp_path / "a" / "held.png"
    check_png(p)
    # held fractions from runs' held:* columns when verdicts are missing
    held_cols = ["run_id", "optimizer", "seed", "held:inst_gap", "held:descent_bound"]
    check_png(figures.plot_held_fractions(None, sweep["runs"][held_cols], tmp_path / "h2.png"))
    check_png(
        figures.plot_trajectories(
            sweep["histories"], sweep["runs"], tmp_path / "traj.png", keys=["step/inst_gap"]
        )
    )
    check_png(
        figures.plot_constant_vs_performance(
            sweep["runs"][["run_id", "optimizer", "steps_to_target", "const:L", "const:gamma"]],
            sweep["correlations"],
            tmp_path / "sc.png",
            performance="steps_to_target",
        )
    )
    # degraded inputs: a "no data" figure, never an exception
    for path in (
        figures.plot_trajectories(sweep["histories"], None, tmp_path / "n1.png", keys=["nope"]),
        figures.plot_constant_vs_performance(sweep["runs"], None, tmp_path / "n2.png", "missing"),
        figures.plot_constant_vs_performance(
            sweep["runs"][["run_id", "final_train_loss"]], None, tmp_path / "n3.png"
        ),
        figures.plot_optimizer_comparison(pd.DataFrame({"optimizer": ["a"]}), tmp_path / "n4.png"),
        figures.plot_held_fractions(pd.DataFrame(), pd.DataFrame(), tmp_path / "n5.png"),
    ):
        assert path.is_file() and mpimg.imread(path).ndim == 3


def _figure_modules() -> list:
    names = [m.name for m in pkgutil.iter_modules(figures.__path__)]
    assert {"canvas", "trajectories", "comparison"} <= set(names)
    return [figures] + [importlib.import_module(f"{figures.__name__}.{n}") for n in names]


def test_figures_do_not_touch_pyplot(tmp_path, sweep, monkeypatch):
    """With pyplot imported and its figure functions made to fail, every figure still draws,
    and pyplot holds no new figure."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()

    def forbidden(*args, **kwargs):
        raise AssertionError("a figure function used pyplot")

    for name in ("figure", "subplots", "subplot", "subplot_mosaic", "gcf", "gca", "savefig"):
        monkeypatch.setattr(plt, name, forbidden)
    for path in draw_every_figure(sweep, tmp_path):
        check_png(path, min_bytes=5_000)
    assert plt.get_fignums() == before
    for module in _figure_modules():
        for name, value in vars(module).items():
            assert value is not plt, f"{module.__name__} imports pyplot as {name}"
            assert getattr(value, "__module__", None) != plt.__name__, (module.__name__, name)


def test_trajectory_titles_come_from_the_registry():
    signs = [a for a in ASSUMPTIONS.values() if a.kind == "sign"]
    assert DEFAULT_TRAJECTORY_KEYS == tuple(a.keys[0] for a in signs)
    for a in signs:
        title = panel_title(a.keys[0])
        assert title.startswith(f"{a.label}: ") and f"(held: {a.symbols})" in title
        assert all(k in title for k in a.keys)
    assert panel_title("train/loss") == "training loss"
    assert panel_title("curv/lambda_max") == "curv/lambda_max"


def test_comparison_measures_are_the_deciding_entries_of_the_findings(sweep):
    """The bars: every sign check the registry ties to a finding as independent evidence,
    labelled by the registry; the fitted (L0,L1) form, near-duplicates (inst_gap_old) and
    assumptions without a finding are not bars."""
    measures = figures.comparison_measures(sweep["comparison"])
    signs = [
        a for a in ASSUMPTIONS.values() if a.finding and a.kind == "sign" and a.duplicates is None
    ]
    expected = [a for a in signs if a.finding == "smoothness"]
    expected += [a for a in signs if a.finding == "convexity"]
    assert measures == [(a.id, a.label) for a in expected]
    assert figures.ASSUMPTION_ORDER == tuple(ASSUMPTIONS)
    assert "t interval over runs" in INTERVALS and "pooled" in INTERVALS


def test_held_markers_use_the_rounding_tolerance():
    check = SIGN_CHECKS["step/inst_gap"]
    rows = pd.DataFrame(
        {"step/inst_gap": [-1.0, 1e-9, 1e-9, np.nan], "step/float_tol": [0.0, 1e-8, np.nan, 1.0]}
    )
    held, measured = held_on_rows(check, rows)
    assert measured.tolist() == [True, True, True, False]
    assert held.tolist() == [True, True, False, False]
    held, _ = held_on_rows(check, rows.drop(columns="step/float_tol"))
    assert held.tolist() == [True, False, False, False]
