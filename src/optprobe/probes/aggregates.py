"""Running aggregates of per-step probe values: EMAs, cumulative sums, windows, held fractions."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from optprobe.assumptions import variants_logged_under


class RunningAggregates:
    """Exponential moving averages, cumulative sums, windowed sums and "held" counters.

    Everything lives in plain Python numbers so ``state_dict`` round-trips exactly. EMAs are
    bias-corrected (the first value is returned as is).
    """

    def __init__(self, ema_betas: tuple[float, ...] = (0.9, 0.99, 0.999), window: int = 100):
        self.ema_betas = tuple(float(b) for b in ema_betas)
        self.window = int(window)
        self.ema: dict[str, float] = {}
        self.ema_weight: dict[str, float] = {}
        self.cum: dict[str, float] = {}
        self.windows: dict[str, deque] = {}
        self.held: dict[str, int] = {}
        self.checked: dict[str, int] = {}

    def update_ema(self, key: str, value: float) -> dict[str, float]:
        """Update the EMAs of ``key``; returns ``{key_ema<beta>: value}`` for every beta."""
        out = {}
        for beta in self.ema_betas:
            name = f"{key}_ema{beta:g}"
            self.ema[name] = beta * self.ema.get(name, 0.0) + (1 - beta) * value
            self.ema_weight[name] = beta * self.ema_weight.get(name, 0.0) + (1 - beta)
            out[name] = self.ema[name] / self.ema_weight[name]
        return out

    def add(self, key: str, value: float) -> float:
        """Add to the cumulative sum and the window of ``key``; returns the cumulative sum."""
        self.cum[key] = self.cum.get(key, 0.0) + value
        self.windows.setdefault(key, deque(maxlen=self.window)).append(value)
        return self.cum[key]

    def window_sum(self, key: str) -> float:
        return float(sum(self.windows.get(key, ())))

    def record_held(self, name: str, held: bool) -> float:
        """Count one check of assumption ``name``; returns the fraction held so far."""
        self.checked[name] = self.checked.get(name, 0) + 1
        self.held[name] = self.held.get(name, 0) + int(held)
        return self.held[name] / self.checked[name]

    def record_variants(self, family: str, logged: Mapping[str, float]) -> dict[str, float]:
        """Judge one probed step on every registry sign check a probe logging under
        ``family`` can judge online (``logged``: its values, ``<family>/<key>``); returns the
        running fractions (``<family>/frac_<...>_held``) of the checks that scored this step
        (a descent bound is scored on steps that made progress only)."""
        out = {}
        for variant in variants_logged_under(family, kind="sign"):
            if not variant.online:
                continue
            held = variant.judge_step(logged)
            if held is not None:
                out[variant.running_key] = self.record_held(variant.id, held)
        return out

    def fractions(self) -> dict[str, dict[str, float]]:
        """``{name: {"held": k, "checked": n, "fraction": k/n}}`` for every checked assumption."""
        return {
            name: {"held": self.held[name], "checked": n, "fraction": self.held[name] / n}
            for name, n in self.checked.items()
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": dict(self.ema),
            "ema_weight": dict(self.ema_weight),
            "cum": dict(self.cum),
            "windows": {k: list(v) for k, v in self.windows.items()},
            "held": dict(self.held),
            "checked": dict(self.checked),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema, self.ema_weight = dict(state["ema"]), dict(state["ema_weight"])
        self.cum = dict(state["cum"])
        self.windows = {k: deque(v, maxlen=self.window) for k, v in state["windows"].items()}
        self.held, self.checked = dict(state["held"]), dict(state["checked"])
