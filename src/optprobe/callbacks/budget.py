"""An overhead budget for probes: adapt every probe's cadence so that probe time stays within a
fraction of training time.

``probes.budget=0.1`` asks that the seconds spent in probes stay at most 10 % of the seconds
spent training (``probe/overhead`` = probe seconds / training seconds, the same ratio the probes
log). Two pieces:

- :class:`CadenceController`: pure decision logic. Fed the cumulative seconds and firing counts
  of each probe, it estimates the cost of one firing of each probe and the training seconds per
  step (exponential moving averages), and gives every probe an equal share of the budget
  (water-filling: a probe that needs less than its share at its densest cadence leaves the rest
  to the others). Cadences stay within ``[min_every, max_every]``: a probe is never starved; it
  still runs at least every ``max_every`` steps even when that breaks the budget, which the
  realized overhead then shows. Time comes from an injectable ``clock``, so the controller is
  tested with a fake clock, deterministically.
- :class:`OverheadBudget`: the Lightning callback that reads the trainer's probe callbacks,
  asks the controller every ``check_every`` optimizer steps and applies the new cadences at
  safe points (never between a probe's two halves of one step), logging ``probe/budget``,
  ``probe/overhead_realized`` and ``probe/<family>_every``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from optprobe.dist import from_rank_zero
from optprobe.probes.base import ProbeCallback
from optprobe.validate import check_int, check_number

Clock = Callable[[], float]

#: the largest factor by which one update may change a cadence (up or down)
MAX_CHANGE = 8.0


def _check_budget(budget: Any) -> float:
    return check_number(
        "probes.budget",
        budget,
        low=0,
        low_open=True,
        hint="a fraction of training time; 0.1 allows at most 10 % probe overhead",
    )


class CadenceController:
    """Decides each probe's ``every_n_steps`` from measured probe and training seconds.

    Args:
        budget: the allowed probe seconds per training second (> 0; 0.1 = 10 %).
        min_every: smallest cadence (densest probing), one int for all probes or a mapping
            name -> int (names missing from it get 1).
        max_every: largest cadence: every probe still runs at least every this many steps.
        smoothing: weight of the newest measurement in the moving averages of costs (0, 1].
        max_change: largest factor by which one update changes a cadence (damps noise).
        clock: seconds as a float (``time.perf_counter`` by default; inject a fake in tests).

    Use: ``start(cadences, step)`` once, then ``update(step, probe_seconds, fired)`` with the
    *cumulative* probe seconds and firing counts per probe name; it returns the new cadences.
    Training seconds are wall-clock seconds (from ``clock``) minus probe seconds.
    """

    def __init__(
        self,
        budget: float,
        min_every: int | Mapping[str, int] = 1,
        max_every: int = 1000,
        smoothing: float = 0.5,
        max_change: float = MAX_CHANGE,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.budget = _check_budget(budget)
        self.max_every = check_int("probes.budget.max_every_n_steps", max_every, 1)
        if isinstance(min_every, Mapping):
            self.min_every = {
                k: check_int(f"probes.budget.min_every_n_steps.{k}", v, 1)
                for k, v in min_every.items()
            }
            self.default_min = 1
        else:
            self.min_every = {}
            self.default_min = check_int("probes.budget.min_every_n_steps", min_every, 1)
        if any(v > self.max_every for v in [self.default_min, *self.min_every.values()]):
            raise ValueError(
                f"probes.budget.min_every_n_steps ({min_every}) must not exceed "
                f"probes.budget.max_every_n_steps ({max_every})"
            )
        self.smoothing = check_number(
            "probes.budget.smoothing", smoothing, low=0, high=1, low_open=True
        )
        check_number("max_change", max_change, low=1, low_open=True, example=8)
        self.hysteresis = 0.1
        self.max_change = float(max_change)
        self.clock = clock
        self.cadences: dict[str, int] = {}
        self.cost: dict[str, float] = {}  # seconds per firing, moving average
        self.step_seconds: float | None = None  # training seconds per step, moving average
        self.realized_overhead = 0.0  # cumulative probe seconds / training seconds
        self.window_overhead = 0.0  # the same over the last update's window
        self._start_time: float | None = None
        self._base_seconds = 0.0
        self._last: dict[str, Any] = {}

    def min_for(self, name: str) -> int:
        return self.min_every.get(name, self.default_min)

    # ----------------------------------------------------------------- measurement
    def start(
        self,
        cadences: Mapping[str, int],
        step: int = 0,
        probe_seconds: Mapping[str, float] | None = None,
        fired: Mapping[str, int] | None = None,
    ) -> None:
        """Begin measuring now, from the probes' current cadences (clamped to the limits).

        ``probe_seconds`` and ``fired`` are the cumulative counters at this moment (non-zero
        after a resume); later updates count from them.
        """
        self.cadences = {k: self._clamp(k, int(v)) for k, v in cadences.items()}
        self._start_time = self.clock()
        self._base_seconds = sum((probe_seconds or {}).values())
        self._last = {
            "time": self._start_time,
            "step": step,
            "seconds": dict(probe_seconds or {}),
            "fired": dict(fired or {}),
        }

    def _clamp(self, name: str, k: int) -> int:
        return max(self.min_for(name), min(self.max_every, k))

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.smoothing) * old + self.smoothing * new

    def update(
        self, step: int, probe_seconds: Mapping[str, float], fired: Mapping[str, int]
    ) -> dict[str, int]:
        """New cadences from the cumulative ``probe_seconds`` and ``fired`` counts at ``step``."""
        if self._start_time is None:
            raise RuntimeError("call start() before update()")
        now = self.clock()
        last = self._last
        steps = step - last["step"]
        wall = now - last["time"]
        d_seconds = {k: v - last["seconds"].get(k, 0.0) for k, v in probe_seconds.items()}
        d_fired = {k: v - last["fired"].get(k, 0) for k, v in fired.items()}
        probe_window = sum(d_seconds.values())
        train_window = max(wall - probe_window, 1e-12)
        self.window_overhead = probe_window / train_window
        total_probe = sum(probe_seconds.values()) - self._base_seconds
        total_train = max(now - self._start_time - total_probe, 1e-12)
        self.realized_overhead = total_probe / total_train
        self._last = {
            "time": now,
            "step": step,
            "seconds": dict(probe_seconds),
            "fired": dict(fired),
        }
        if steps <= 0:
            return dict(self.cadences)
        self.step_seconds = self._average(self.step_seconds, train_window / steps)
        for name, count in d_fired.items():
            if count > 0:
                self.cost[name] = self._average(self.cost.get(name), d_seconds[name] / count)
        self.cadences = self.decide()
        return dict(self.cadences)

    # ----------------------------------------------------------------- decision
    def target(self) -> float:
        """The overhead aimed at in the next window: the budget, lowered (at most to half of
        it) while the cumulative overhead is above the budget, so that it comes back under."""
        if self.realized_overhead <= self.budget:
            return self.budget
        return self.budget * max(0.5, self.budget / self.realized_overhead)

    def decide(self) -> dict[str, int]:
        """Equal shares of the target overhead, water-filled within the cadence limits."""
        cadences = dict(self.cadences)
        s = self.step_seconds
        known = [k for k in cadences if self.cost.get(k, 0.0) > 0]
        if not s or not known:
            return cadences
        # overhead of probe k at cadence c: cost_k / (c * s)
        remaining, active, fixed = self.target(), list(known), {}
        while active:
            share = max(remaining / len(active), 1e-12)
            ideal = {k: self.cost[k] / (s * share) for k in active}
            pinned = {
                k: self.min_for(k) if v <= self.min_for(k) else self.max_every
                for k, v in ideal.items()
                if v <= self.min_for(k) or v >= self.max_every
            }
            if not pinned:
                fixed.update({k: math.ceil(v - 1e-9) for k, v in ideal.items()})
                break
            for k, c in pinned.items():
                fixed[k] = c
                remaining -= self.cost[k] / (c * s)
                active.remove(k)
        for k, c in fixed.items():
            old = cadences[k]
            if abs(c - old) <= self.hysteresis * old:
                continue  # too small a change to be worth a new phase
            c = min(c, math.floor(old * self.max_change)) if c > old else c
            c = max(c, math.ceil(old / self.max_change)) if c < old else c
            cadences[k] = self._clamp(k, int(c))
        return cadences

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "cadences": dict(self.cadences),
            "cost": dict(self.cost),
            "step_seconds": self.step_seconds,
            "realized_overhead": self.realized_overhead,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.cadences = dict(state["cadences"])
        self.cost = dict(state["cost"])
        self.step_seconds = state["step_seconds"]
        self.realized_overhead = state["realized_overhead"]


class OverheadBudget(Callback):
    """Keeps the time spent in probes within ``budget`` x the time spent training.

    Every ``check_every`` optimizer steps it measures, for each probe callback of the trainer
    (:class:`~optprobe.probes.base.ProbeCallback` with a fixed cadence; log-spaced probes are
    left alone but their time counts), the seconds per firing and the training seconds per step,
    and sets the probes' ``every_n_steps`` (see :class:`CadenceController`). A cadence change
    takes effect at the start of the next step, never between a probe's two halves of one step:
    a probe that fired on the step just finished keeps its old cadence for one more step (or,
    at cadence 1, fires once more on the next step), so step probes that carry state from one
    step to the next (the fresh-batch scheme, ``update_cos_prev``) stay exact.

    Logged every check (rank zero, through the trainer's loggers): ``probe/budget`` (the
    fraction asked for), ``probe/overhead_realized`` (cumulative probe seconds / training
    seconds since training started, by this callback's clock), ``probe/overhead_window`` (the
    same over the last check window) and ``probe/<family>_every`` (each probe's cadence, e.g.
    ``probe/step_every``, ``probe/curv_every``, ``probe/noise_every``).

    Args (Hydra ``probes.budget.*``; ``probes.budget=<fraction>`` sets ``budget`` alone):
        budget: allowed probe seconds per training second (> 0; 0.1 = 10 %).
        min_every_n_steps: densest cadence allowed (int for all probes, or a mapping
            family -> int, e.g. ``{step: 1, curv: 10}``).
        max_every_n_steps: sparsest cadence: every probe still runs at least this often.
        check_every: optimizer steps between two decisions (the first ones come after 1, 2,
            4, ... steps).
        smoothing: weight of the newest window in the moving cost averages.
        clock: a zero-argument function returning seconds (default ``time.perf_counter``);
            tests inject a fake one.
    """

    def __init__(
        self,
        budget: float = 0.1,
        min_every_n_steps: int | Mapping[str, int] = 1,
        max_every_n_steps: int = 1000,
        check_every: int = 10,
        smoothing: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        super().__init__()
        if isinstance(min_every_n_steps, Mapping):
            min_every_n_steps = dict(min_every_n_steps)
        self.controller = CadenceController(
            budget,
            min_every=min_every_n_steps,
            max_every=max_every_n_steps,
            smoothing=smoothing,
            clock=clock or time.perf_counter,
        )
        self.check_every = check_int("probes.budget.check_every", check_every, 1)
        self.probes: dict[str, ProbeCallback] = {}
        self.fired: dict[str, int] = {}
        self._pending: dict[str, int] = {}  # name -> cadence waiting for a safe step
        self._last_step: int | None = None  # the optimizer step that just finished
        self._steps_since_check = 0
        self._steps_seen = 0
        self._restored: dict[str, Any] | None = None
        self.last_values: dict[str, float] = {}

    @classmethod
    def from_value(cls, value: Any) -> OverheadBudget:
        """``probes.budget=<fraction>`` on the command line: a budget with default settings."""
        return cls(budget=_check_budget(value))

    @property
    def budget(self) -> float:
        return self.controller.budget

    # ----------------------------------------------------------------- lifecycle
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # keyed by the probes' key prefixes: probe/step_every, probe/curv_every, ...
        self.probes = {c.prefix: c for c in trainer.callbacks if isinstance(c, ProbeCallback)}
        self.fired = {name: self.fired.get(name, 0) for name in self.probes}

    def _adaptive(self) -> dict[str, ProbeCallback]:
        return {k: p for k, p in self.probes.items() if not p.log_spaced}

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored is not None:
            for name, (every, start) in self._restored.get("schedules", {}).items():
                if name in self.probes:
                    self.probes[name].every_n_steps, self.probes[name].start_step = every, start
        cadences = {k: p.every_n_steps for k, p in self._adaptive().items()}
        self.controller.start(
            cadences,
            step=trainer.global_step,
            probe_seconds={k: p.probe_seconds for k, p in self.probes.items()},
            fired={k: v for k, v in self.fired.items() if k in cadences},
        )
        if self._restored is not None:
            self.controller.cost.update(self._restored["controller"]["cost"])
            self.controller.step_seconds = self._restored["controller"]["step_seconds"]
        self._restored = None
        # A probe configured denser than min_every_n_steps (or sparser than max) is clamped.
        for name, cadence in self.controller.cadences.items():
            if cadence != self.probes[name].every_n_steps:
                self._pending[name] = cadence

    @override
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.sanity_checking:
            return
        step = trainer.global_step
        for name, probe in self.probes.items():
            if probe.is_probe_step(step):
                self.fired[name] += 1
        self._last_step = step

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Runs before any probe sees the new step, whatever the order of the callbacks, and
        # after every probe finished the previous step: the safe place to change cadences.
        if self._last_step is None:
            return
        step, self._last_step = self._last_step, None
        self._steps_seen += 1
        self._steps_since_check += 1
        early = (
            self._steps_seen < self.check_every and self._steps_seen & (self._steps_seen - 1) == 0
        )
        if early or self._steps_since_check >= self.check_every:
            self._steps_since_check = 0
            self._check(trainer, step)
        self._apply_pending(step)

    def _check(self, trainer: pl.Trainer, step: int) -> None:
        seconds = {name: p.probe_seconds for name, p in self.probes.items()}
        adaptive = self._adaptive()
        cadences = self.controller.update(
            step + 1,
            seconds,
            {k: v for k, v in self.fired.items() if k in adaptive},
        )
        # Timings differ between DDP ranks; every rank must probe the same steps (the probes'
        # all-reduces pair up), so rank 0's cadences rule.
        cadences = from_rank_zero(cadences)
        # the controller keeps no cost for log-spaced probes; their seconds still count
        for name, cadence in cadences.items():
            if cadence != adaptive[name].every_n_steps:
                self._pending[name] = cadence
            else:
                self._pending.pop(name, None)
        values = {
            "probe/budget": self.budget,
            "probe/overhead_realized": self.controller.realized_overhead,
            "probe/overhead_window": self.controller.window_overhead,
        }
        for name, probe in self.probes.items():
            values[f"probe/{name}_every"] = float(self._pending.get(name, probe.every_n_steps))
        self.last_values = values
        if trainer.is_global_zero:
            log_step = trainer.fit_loop.epoch_loop._batches_that_stepped
            for logger in trainer.loggers:
                logger.log_metrics(values, step=log_step)

    def _apply_pending(self, step: int) -> None:
        """Apply waiting cadence changes after optimizer step ``step`` finished."""
        for name in list(self._pending):
            probe, cadence = self.probes[name], self._pending[name]
            fired_now = probe.is_probe_step(step)
            if fired_now and probe.every_n_steps > 1:
                continue  # the probe's next step must still see the old schedule; retry then
            if fired_now:  # cadence 1: fire once more on the next step, then every `cadence`
                start = step + 1
            elif step < probe.start_step:
                start = max(probe.start_step, step + 2)
            else:
                last = step - (step - probe.start_step) % probe.every_n_steps
                # >= step + 2: the step before the next firing is recorded under the new schedule
                start = max(step + 2, last + cadence)
            probe.every_n_steps, probe.start_step = cadence, start
            del self._pending[name]

    # ----------------------------------------------------------------- results and state
    def final_summary(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "overhead_realized": self.controller.realized_overhead,
            "every_n_steps": {k: p.every_n_steps for k, p in self.probes.items()},
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "controller": self.controller.state_dict(),
            "fired": dict(self.fired),
            "schedules": {k: (p.every_n_steps, p.start_step) for k, p in self.probes.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)
        self.fired.update(state_dict.get("fired", {}))
