"""Figures and the static HTML report, on synthetic sweep tables."""

from __future__ import annotations

import shutil
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from optprobe.analysis import plots
from optprobe.analysis.report import (
    FIGURES,
    TABLES,
    answer_sentences,
    correlation_sentence,
    optimizer_sentence,
    write_report,
)

LABELS = {
    "descent_bound": "L-smooth descent bound",
    "inst_gap": "convexity along the step (x_{t+1})",
    "inst_gap_old": "convexity along the step (x_t)",
    "ref_gap": "convexity w.r.t. reference point",
    "l0l1_smooth": "(L0,L1)-smoothness",
    "bounded_variance": "bounded variance",
    "affine_variance": "affine variance",
}
CONSTANTS = ("L", "L0", "L1", "gamma", "rho_weak", "sigma0", "sigma1", "pl")
PERFORMANCE = ("final_train_loss", "steps_to_target")
VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
    "track", "wbr",
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# synthetic sweep


def _history(rng: np.random.Generator, steps: int, with_ref: bool, adam: bool) -> pd.DataFrame:
    step = np.arange(steps)
    probed = step % 2 == 0  # probe every 2nd step; NaN elsewhere
    scale = np.exp(-step / 40) * (0.05 if adam else 0.5)
    change = -scale * rng.uniform(0.2, 1.0, steps) + scale * rng.normal(0, 0.3, steps)
    lin_old = -scale * rng.uniform(0.5, 1.5, steps)
    lin_new = change + scale * rng.normal(0.3, 0.3, steps)
    bound = lin_old + scale * rng.uniform(0.0, 3.0, steps)
    h = pd.DataFrame(
        {
            "step": step,
            "train/loss": 2.3 * np.exp(-step / 60) + 0.1,
            "step/loss_change": change,
            "step/inst_gap": change - lin_new,
            "step/inst_gap_old": change - lin_old,
            "step/descent_bound": bound,
        }
    )
    if with_ref:
        h["ref/gap"] = -np.abs(rng.normal(0, 1, steps)) * 10.0 ** rng.uniform(-3, 1, steps)
        h.loc[rng.random(steps) < 0.1, "ref/gap"] *= -1
    for c in h.columns:
        if c not in ("step", "train/loss"):
            h.loc[~probed, c] = np.nan
    return h


def _held_counts(h: pd.DataFrame) -> dict[str, tuple[int, int]]:
    out = {}
    for key, (need, cond) in plots.HELD_CONDITIONS.items():
        if not all(c in h.columns for c in need):
            continue
        measured = h[list(need)].notna().all(axis=1)
        held = cond(h[measured])
        out[key] = (int(held.sum()), int(measured.sum()))
    return out


def _wilson(held: int, n: int) -> tuple[float, float]:
    if n == 0:
        return np.nan, np.nan
    p, z = held / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def make_sweep(
    optimizers=("sgdm", "adamw"),
    seeds=(0, 1, 2),
    steps=100,
    with_ref=True,
    seed=0,
    constants=CONSTANTS,
) -> dict:
    rng = np.random.default_rng(seed)
    key_to_id = {
        "step/inst_gap": "inst_gap",
        "step/inst_gap_old": "inst_gap_old",
        "step/descent_bound": "descent_bound",
        "ref/gap": "ref_gap",
    }
    runs, verdicts, histories = [], [], {}
    for opt in optimizers:
        for s in seeds:
            run_id = f"{opt}-resnet18-s{s}"
            h = _history(rng, steps, with_ref, adam=opt.startswith("adam"))
            histories[run_id] = h
            counts = {key_to_id[k]: v for k, v in _held_counts(h).items()}
            for a in ("l0l1_smooth", "bounded_variance", "affine_variance"):
                n = int(rng.integers(20, 50))
                counts[a] = (int(rng.integers(0, n + 1)), n)
            row = {
                "run_id": run_id,
                "optimizer": opt,
                "model": "resnet18",
                "data": "cifar10",
                "seed": s,
                "lr": 0.1 if opt == "sgdm" else 3e-4,
                "schedule": "cosine",
                "final_train_loss": float(rng.uniform(0.05, 0.5)),
                "steps_to_target": float(rng.integers(50, 100)) if s != 2 else np.nan,
                "final_val_loss": float(rng.uniform(0.3, 0.8)),
                "final_val_acc": float(rng.uniform(0.8, 0.95)),
            }
            for a, (held, n) in counts.items():
                lo, hi = _wilson(held, n)
                row[f"held:{a}"] = held / n
                verdicts.append(
                    {
                        "run_id": run_id,
                        "assumption": a,
                        "label": LABELS[a],
                        "held": held,
                        "checked": n,
                        "fraction": held / n,
                        "ci_low": lo,
                        "ci_high": hi,
                    }
                )
            for c in constants:
                row[f"const:{c}"] = float(10 ** rng.uniform(-2, 3))
            runs.append(row)
    runs = pd.DataFrame(runs)
    verdicts = pd.DataFrame(verdicts)

    corr = []
    for c in constants:
        for perf in PERFORMANCE:
            ok = runs[[f"const:{c}", perf]].dropna()
            n = len(ok)
            rho = stats.spearmanr(ok.iloc[:, 0], ok.iloc[:, 1]).statistic if n > 2 else np.nan
            corr.append(
                {
                    "constant": c,
                    "performance": perf,
                    "n": n,
                    "rho": rho,
                    "ci_low": max(-1.0, rho - 0.7) if np.isfinite(rho) else np.nan,
                    "ci_high": min(1.0, rho + 0.7) if np.isfinite(rho) else np.nan,
                    "pvalue": 0.5,
                }
            )
    correlations = pd.DataFrame(corr)

    measures = {
        "smoothness_predicts": "held:descent_bound",
        "convexity_holds": "held:inst_gap",
        "convexity_old_holds": "held:inst_gap_old",
        "ref_convexity_holds": "held:ref_gap",
    }
    comp = []
    for opt, g in runs.groupby("optimizer", sort=False):
        row = {"optimizer": opt, "n_runs": len(g)}
        for m, col in measures.items():
            if col not in g.columns:
                row[m] = row[f"{m}_low"] = row[f"{m}_high"] = np.nan
                continue
            mean, sd = g[col].mean(), g[col].std(ddof=1)
            half = 1.96 * sd / np.sqrt(len(g)) if len(g) > 1 else np.nan
            row[m] = mean
            row[f"{m}_low"] = np.clip(mean - half, 0, 1)  # NaN for a single run
            row[f"{m}_high"] = np.clip(mean + half, 0, 1)
        comp.append(row)
    comparison = pd.DataFrame(comp)
    return {
        "runs": runs,
        "verdicts": verdicts,
        "correlations": correlations,
        "comparison": comparison,
        "histories": histories,
    }


# --------------------------------------------------------------------------------------------
# checkers


class TagBalance(HTMLParser):
    """Counts open/close of non-void tags; records mismatches and what is left open."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            if tag in self.stack:
                del self.stack[len(self.stack) - 1 - self.stack[::-1].index(tag) :]
            return
        self.stack.pop()


def check_html(path: Path) -> TagBalance:
    parser = TagBalance()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.errors == [], parser.errors
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    return parser


def check_png(path: Path, min_bytes: int = 10_000) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_bytes, (path, path.stat().st_size)
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    colours = np.unique(img.reshape(-1, img.shape[-1])[::7], axis=0)
    assert len(colours) > 5, f"{path.name} is (nearly) a single colour"


def check_self_contained(parser: TagBalance, html: str) -> None:
    assert "<script" not in html.lower()
    for tag, attrs in parser.tags:
        for attr in ("src", "href"):
            ref = attrs.get(attr)
            if ref is not None:
                assert "://" not in ref and not ref.startswith("/"), (tag, ref)
        assert tag not in ("link", "iframe", "object", "embed"), tag


# --------------------------------------------------------------------------------------------
# the full report


@pytest.fixture(scope="module")
def sweep():
    return make_sweep()


@pytest.fixture(scope="module")
def full_report(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = write_report(
        out,
        **sweep,
        title="CIFAR-10 sweep <SGDM vs AdamW>",
        notes=["replay matched the reference run for 6/6 runs", "x < y & z"],
    )
    return path


def test_report_writes_every_file(full_report):
    out = full_report.parent
    assert full_report.name == "report.html" and full_report.is_file()
    for name in TABLES:
        assert (out / name).is_file(), name
    for name in FIGURES:
        check_png(out / name)
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6 and "const:L" in runs.columns
    assert len(pd.read_csv(out / "verdicts.csv")) == 6 * 7


def test_report_html_content(full_report, sweep):
    html = full_report.read_text(encoding="utf-8")
    parser = check_html(full_report)
    check_self_contained(parser, html)
    for run_id in sweep["runs"]["run_id"]:
        assert escape(run_id) in html, run_id
    for label in sweep["verdicts"]["label"].unique():
        assert escape(label) in html, label
    for c in CONSTANTS:
        assert f"const:{c}" in html and f'<td class="text">{c}</td>' in html, c
    for sentence in answer_sentences(sweep["comparison"], sweep["correlations"]):
        assert escape(sentence) in html, sentence
    assert "SGDM (3 runs): L-smoothness predicted the progress on" in html
    assert "AdamW (3 runs): " in html
    assert "reference point held on" in html
    assert "Spearman correlation" in html
    srcs = {a["src"] for t, a in parser.tags if t == "img"}
    assert srcs == set(FIGURES)
    # title and notes escaped, notes listed
    assert "<title>CIFAR-10 sweep &lt;SGDM vs AdamW&gt;</title>" in html
    assert "<li>x &lt; y &amp; z</li>" in html
    assert "replay matched the reference run for 6/6 runs" in html
    # section order: answer, comparison figure, held fractions, trajectories, scatter, tables
    order = [
        'id="answer"',
        'src="optimizer_comparison.png"',
        'src="held_fractions.png"',
        'src="trajectories.png"',
        'src="constants_vs_performance.png"',
        "<h2>Table: optimizer comparison</h2>",
        "<h2>Table: fitted constants",
        "<h2>Table: per-run verdicts</h2>",
        "<h2>Table: runs</h2>",
    ]
    positions = [html.index(s) for s in order]
    assert positions == sorted(positions)


def test_correlation_table_sorted_by_abs_rho(full_report, sweep):
    html = full_report.read_text(encoding="utf-8")
    start = html.index("<h2>Table: fitted constants")
    section = html[start : html.index("<h2>Table: per-run verdicts</h2>")]
    rows = [r for r in section.split("<tr") if "<td" in r]
    rhos = [float(r.split("<td>")[2].split("</td>")[0]) for r in rows]
    assert len(rhos) == len(sweep["correlations"])
    assert np.all(np.diff(np.abs(rhos)) <= 1e-3)


def test_figures_do_not_touch_pyplot(full_report):
    import sys

    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


# --------------------------------------------------------------------------------------------
# sentences


def test_optimizer_sentence_format():
    row = {
        "optimizer": "sgdm",
        "n_runs": 3,
        "smoothness_predicts": 0.12,
        "smoothness_predicts_low": 0.08,
        "smoothness_predicts_high": 0.17,
        "convexity_holds": 0.91,
        "convexity_holds_low": 0.88,
        "convexity_holds_high": 0.94,
        "ref_convexity_holds": np.nan,
    }
    s = optimizer_sentence(row)
    assert s.startswith("SGDM (3 runs): L-smoothness predicted the progress on 12% [8–17%]")
    assert "convexity along the step held on 91% [88–94%]" in s
    assert "reference" not in s.split(".")[0]
    assert "clearly more often" in s
    assert optimizer_sentence({"optimizer": "lion"}) == "Lion: no assumption was measured."


def test_correlation_sentence():
    none = pd.DataFrame(
        {"constant": ["L", "gamma"], "performance": ["final_train_loss"] * 2, "n": [6, 6],
         "rho": [0.4, -0.1], "ci_low": [-0.3, -0.8], "ci_high": [0.9, 0.6], "pvalue": [0.4, 0.8]}
    )  # fmt: skip
    s = correlation_sentence(none)
    assert s.startswith("None of the 2 Spearman correlations") and "excludes 0" in s
    assert "L with final training loss (ρ = 0.40" in s
    some = none.assign(ci_low=[0.1, -0.8])
    s = correlation_sentence(some)
    assert s.startswith("1 of 2 Spearman correlations") and "L with final training loss" in s
    assert "No correlation" in correlation_sentence(pd.DataFrame())


# --------------------------------------------------------------------------------------------
# missing data


def test_report_without_reference_probe(tmp_path):
    sw = make_sweep(with_ref=False, seeds=(0, 1), steps=60, seed=1, constants=("L", "sigma0"))
    sw["comparison"] = sw["comparison"].drop(
        columns=["ref_convexity_holds", "ref_convexity_holds_low", "ref_convexity_holds_high"]
    )
    assert "held:ref_gap" not in sw["runs"].columns
    path = write_report(tmp_path, **sw)
    html = path.read_text(encoding="utf-8")
    check_html(path)
    for name in FIGURES:
        check_png(tmp_path / name)
        assert f'src="{name}"' in html
    assert "reference point held on" not in html
    for run_id in sw["runs"]["run_id"]:
        assert run_id in html


def test_report_single_run(tmp_path):
    sw = make_sweep(optimizers=("sgdm",), seeds=(0,), steps=40, seed=2, constants=("L",))
    sw["correlations"] = sw["correlations"].iloc[0:0]
    path = write_report(tmp_path, **sw)
    html = path.read_text(encoding="utf-8")
    check_html(path)
    assert "sgdm-resnet18-s0" in html
    assert "SGDM (1 run): " in html
    assert "No correlation between a fitted constant and performance was computed." in html
    for name in FIGURES:
        assert (tmp_path / name).is_file(), name
        assert f'src="{name}"' in html


def test_report_with_nothing(tmp_path):
    path = write_report(tmp_path / "empty", None, pd.DataFrame(), None, None, {}, notes=["n"])
    html = path.read_text(encoding="utf-8")
    check_html(path)
    for name in TABLES:
        assert (path.parent / name).is_file()
    for name in FIGURES:
        assert (path.parent / name).is_file()
        assert f'src="{name}"' in html
        assert mpimg.imread(path.parent / name).ndim == 3
    assert "No optimizer comparison was available." in html


def test_report_with_partial_columns(tmp_path):
    """Odd inputs: verdicts without intervals, runs without optimizer or constants, histories
    missing most keys, a run known only to the histories, hostile run ids."""
    sw = make_sweep(seeds=(0,), steps=30, seed=3, constants=("L",))
    runs = sw["runs"].drop(columns=[c for c in sw["runs"].columns if c.startswith("const:")])
    runs = runs.drop(columns=["optimizer"])
    runs.loc[0, "run_id"] = "<b>&run"
    verdicts = sw["verdicts"].drop(columns=["ci_low", "ci_high", "label"])
    verdicts.loc[verdicts["run_id"] == "sgdm-resnet18-s0", "run_id"] = "<b>&run"
    histories = {
        "<b>&run": sw["histories"]["sgdm-resnet18-s0"][["step", "step/inst_gap"]],
        "orphan": pd.DataFrame({"step": [0, 1, 2], "step/loss_change": [-1.0, np.nan, 0.5]}),
        "empty": pd.DataFrame(),
    }
    path = write_report(tmp_path, runs, verdicts, None, sw["comparison"], histories)
    html = path.read_text(encoding="utf-8")
    check_html(path)
    assert "&lt;b&gt;&amp;run" in html and "<b>&run" not in html
    for name in FIGURES:
        assert (tmp_path / name).is_file()


# --------------------------------------------------------------------------------------------
# plot functions on their own


def test_plot_functions_return_paths_and_degrade(tmp_path, sweep):
    p = plots.plot_held_fractions(sweep["verdicts"], sweep["runs"], tmp_path / "a" / "held.png")
    assert p == tmp_path / "a" / "held.png"
    check_png(p)
    # held fractions from runs' held:* columns when verdicts are missing
    held_cols = ["run_id", "optimizer", "seed", "held:inst_gap", "held:descent_bound"]
    check_png(plots.plot_held_fractions(None, sweep["runs"][held_cols], tmp_path / "h2.png"))
    check_png(
        plots.plot_trajectories(
            sweep["histories"], sweep["runs"], tmp_path / "traj.png", keys=["step/inst_gap"]
        )
    )
    check_png(
        plots.plot_constant_vs_performance(
            sweep["runs"][["run_id", "optimizer", "steps_to_target", "const:L", "const:gamma"]],
            sweep["correlations"],
            tmp_path / "sc.png",
            performance="steps_to_target",
        )
    )
    # degraded inputs: a "no data" figure, never an exception
    for path in (
        plots.plot_trajectories(sweep["histories"], None, tmp_path / "n1.png", keys=["nope"]),
        plots.plot_constant_vs_performance(sweep["runs"], None, tmp_path / "n2.png", "missing"),
        plots.plot_constant_vs_performance(
            sweep["runs"][["run_id", "final_train_loss"]], None, tmp_path / "n3.png"
        ),
        plots.plot_optimizer_comparison(pd.DataFrame({"optimizer": ["a"]}), tmp_path / "n4.png"),
        plots.plot_held_fractions(pd.DataFrame(), pd.DataFrame(), tmp_path / "n5.png"),
    ):
        assert path.is_file() and mpimg.imread(path).ndim == 3


# --------------------------------------------------------------------------------------------
# rendering in a real browser (only where chromium is installed)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_chromium(full_report, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [
        shutil.which("chromium"),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        full_report.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=False, timeout=60, capture_output=True)
    assert shot.is_file() and shot.stat().st_size > 10_000
    img = mpimg.imread(shot)
    assert len(np.unique(img.reshape(-1, img.shape[-1])[::11], axis=0)) > 5
