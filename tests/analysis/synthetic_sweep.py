"""A synthetic sweep in the analysis tables' schema, and checkers for the report's files."""

from __future__ import annotations

import itertools
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd

from optprobe.analysis.comparison import comparison
from optprobe.analysis.correlations import correlations
from optprobe.analysis.stats import wilson_interval
from optprobe.assumptions import ASSUMPTIONS

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


def held_counts(rng: np.random.Generator, h: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """assumption id -> (held, checked): sign checks judged on ``h`` by the registry, fitted
    forms drawn at random."""
    out = {}
    for a in ASSUMPTIONS.values():
        if a.kind == "fitted":
            n = int(rng.integers(20, 50))
            out[a.id] = (int(rng.integers(0, n + 1)), n)
        elif all(k in h.columns for k in a.keys):
            measured = h[list(a.keys)].notna().all(axis=1)
            out[a.id] = (int(a.held(h[measured]).sum()), int(measured.sum()))
    return out


def _run_row(rng: np.random.Generator, run_id: str, opt: str, seed: int, setting: str) -> dict:
    model, data = setting.split("/")
    return {
        "run_id": run_id,
        "optimizer": opt,
        "model": model,
        "data": data,
        "setting": setting,
        "seed": seed,
        "lr": 0.1 if opt == "sgdm" else 3e-4,
        "schedule": "cosine",
        "final_train_loss": float(rng.uniform(0.05, 0.5)),
        "steps_to_target": float(rng.integers(50, 100)) if seed != 2 else np.nan,
        "final_val_loss": float(rng.uniform(0.3, 0.8)),
        "final_val_acc": float(rng.uniform(0.8, 0.95)),
        "included": True,
        "exclusion_reason": "",
    }


def make_sweep(
    optimizers=("sgdm", "adamw"),
    seeds=(0, 1, 2),
    steps=100,
    with_ref=True,
    seed=0,
    constants=CONSTANTS,
    settings=("resnet18/cifar10",),
) -> dict:
    """runs, verdicts (labels from the registry), correlations and comparison (the sweep's
    own, run-level) and histories of ``len(settings) * len(optimizers) * len(seeds)`` runs
    (run ids ``<optimizer>-<model>-s<seed>``)."""
    rng = np.random.default_rng(seed)
    runs, verdicts, histories = [], [], {}
    for setting, opt, s in itertools.product(settings, optimizers, seeds):
        run_id = f"{opt}-{setting.split('/')[0]}-s{s}"
        h = histories[run_id] = _history(rng, steps, with_ref, adam=opt.startswith("adam"))
        row = _run_row(rng, run_id, opt, s, setting)
        for a, (held, n) in held_counts(rng, h).items():
            lo, hi = wilson_interval(held, n)
            row[f"held:{a}"] = held / n
            verdicts.append(
                {"run_id": run_id, "assumption": a, "label": ASSUMPTIONS[a].label,
                 "held": held, "checked": n, "fraction": held / n, "ci_low": lo, "ci_high": hi}
            )  # fmt: skip
        row.update({f"const:{c}": float(10 ** rng.uniform(-2, 3)) for c in constants})
        runs.append(row)
    runs, verdicts = pd.DataFrame(runs), pd.DataFrame(verdicts)
    return {
        "runs": runs,
        "verdicts": verdicts,
        "correlations": correlations(runs),
        "comparison": comparison(runs, verdicts),
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
