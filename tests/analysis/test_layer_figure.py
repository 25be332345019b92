"""The per-layer heatmap from a synthetic history: the shares it draws against hand-computed
ones, the PNG, and report.html showing it only when layer/* keys exist."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic_sweep import check_png

from optprobe.analysis.figures.layers import layer_prefix, layer_shares, plot_layer_heatmap
from optprobe.analysis.report import FIGURES, OPTIONAL_FIGURES, write_report

GROUPS = ("norm", "attention", "embedding_head", "mlp", "embedding")  # not in display order


def layer_history(steps: int = 40, seed: int = 0, prefix: str = "layer") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols = {"step": np.arange(steps, dtype=float), "step/lin_new": rng.normal(size=steps)}
    for g in GROUPS:
        cols[f"{prefix}/{g}/update_norm"] = rng.uniform(0.1, 2.0, steps)
        cols[f"{prefix}/{g}/lin_new"] = rng.normal(size=steps)
    df = pd.DataFrame(cols)
    df.loc[3, [c for c in df.columns if c.startswith(f"{prefix}/")]] = np.nan  # unprobed step
    return df


def test_shares_match_hand_computation():
    h = layer_history()
    steps, groups, sq = layer_shares(h, "layer", "update_norm")
    assert groups == ["embedding", "embedding_head", "attention", "mlp", "norm"]
    assert 3 not in steps and len(steps) == 39
    norms = np.array([h[f"layer/{g}/update_norm"].drop(index=3) for g in groups])
    assert sq == pytest.approx(norms**2 / (norms**2).sum(axis=0))
    assert sq.sum(axis=0) == pytest.approx(np.ones(39))
    _, _, lin = layer_shares(h, "layer", "lin_new")
    raw = np.array([h[f"layer/{g}/lin_new"].drop(index=3) for g in groups])
    assert lin == pytest.approx(raw / np.abs(raw).sum(axis=0))
    assert np.sign(lin) == pytest.approx(np.sign(raw))


def test_heatmap_png_and_prefix_choice(tmp_path):
    runs = pd.DataFrame(
        {"run_id": ["a", "b", "c"], "optimizer": ["sgdm", "adamw", "sgdm"], "seed": [0, 0, 1]}
    )
    histories = {
        "a": layer_history(),
        "b": layer_history(seed=1, prefix="layer_fresh"),
        "c": layer_history(seed=2),
    }
    assert [layer_prefix(h) for h in histories.values()] == ["layer", "layer_fresh", "layer"]
    assert layer_prefix(pd.DataFrame({"step": [0], "step/lin_new": [1.0]})) is None
    check_png(plot_layer_heatmap(histories, runs, tmp_path / "layers.png"))
    # without any layer/* key: a "no data" figure, not an error
    bare = {"a": histories["a"][["step", "step/lin_new"]]}
    assert plot_layer_heatmap(bare, runs, tmp_path / "none.png").is_file()


def test_report_shows_the_heatmap_only_with_layer_keys(tmp_path):
    runs = pd.DataFrame({"run_id": ["a"], "optimizer": ["adamw"], "seed": [0]})
    with_layers = write_report(tmp_path / "with", runs, None, None, None, {"a": layer_history()})
    html = with_layers.read_text(encoding="utf-8")
    assert 'src="layers.png"' in html and OPTIONAL_FIGURES["layers.png"][0] in html
    check_png(with_layers.parent / "layers.png")
    bare = {"a": layer_history()[["step", "step/lin_new"]]}
    without = write_report(tmp_path / "without", runs, None, None, None, bare)
    html = without.read_text(encoding="utf-8")
    assert "layers.png" not in html and not (without.parent / "layers.png").exists()
    assert all(f'src="{name}"' in html for name in FIGURES)
