"""Figures for a sweep of probed runs (PNG, drawn on ``matplotlib.figure.Figure`` objects).

Every plotting function takes the tidy tables produced by the analysis (see
:mod:`optprobe.analysis.report` for their schema), writes one PNG to ``path`` and returns that
path. None of them touches pyplot's global state, and none of them raises on missing columns or
empty tables: a panel without data is skipped, and a figure without any panel says "no data".
Assumption names, conditions and order come from :mod:`optprobe.assumptions`.

- :mod:`.canvas`: the figure, its grid of panels, PNG output, the "no data" figure;
- :mod:`.ordering`: run and assumption order, optimizer colours;
- :mod:`.held_fractions`, :mod:`.trajectories`, :mod:`.constants`, :mod:`.comparison`,
  :mod:`.layers` (only when the runs logged per-layer keys), :mod:`.stability` (only when
  they carry a stability ratio): one figure each.
"""

from optprobe.analysis.figures.comparison import comparison_measures, plot_optimizer_comparison
from optprobe.analysis.figures.constants import plot_constant_vs_performance
from optprobe.analysis.figures.held_fractions import plot_held_fractions
from optprobe.analysis.figures.layers import plot_layer_heatmap
from optprobe.analysis.figures.ordering import ASSUMPTION_ORDER, optimizer_colors
from optprobe.analysis.figures.stability import plot_stability
from optprobe.analysis.figures.trajectories import DEFAULT_TRAJECTORY_KEYS, plot_trajectories

__all__ = [
    "ASSUMPTION_ORDER",
    "comparison_measures",
    "DEFAULT_TRAJECTORY_KEYS",
    "optimizer_colors",
    "plot_constant_vs_performance",
    "plot_held_fractions",
    "plot_layer_heatmap",
    "plot_optimizer_comparison",
    "plot_stability",
    "plot_trajectories",
]
