"""The overhead budget: the cadence controller with an injected clock, and the callback on a
tiny training run (no wall-clock assertions anywhere)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from harness import fit
from torch import nn

from optprobe.callbacks.budget import CadenceController, OverheadBudget
from optprobe.estimators.functional import functional_loss, supervised
from optprobe.probes.noise import NoiseProbe
from optprobe.probes.step import StepProbe


class FakeClock:
    """A clock that only moves when told to (``advance``), or by ``tick`` on every read."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 0.0, tick

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def simulate(
    controller: CadenceController,
    clock: FakeClock,
    costs: dict[str, float],
    cadences: dict[str, int],
    steps: int,
    step_seconds: float = 1.0,
    check_every: int = 10,
) -> dict:
    """A training loop on the fake clock: each step costs ``step_seconds``, each firing of probe
    k costs ``costs[k]``; every ``check_every`` steps the controller sets the cadences."""
    seconds = dict.fromkeys(costs, 0.0)
    fired = dict.fromkeys(costs, 0)
    firings = {k: [] for k in costs}
    history = []
    controller.start(cadences, step=0)
    cadences = dict(controller.cadences)
    next_fire = dict.fromkeys(costs, 0)
    for step in range(steps):
        clock.advance(step_seconds)
        for k, cost in costs.items():
            if step == next_fire[k]:
                clock.advance(cost)
                seconds[k] += cost
                fired[k] += 1
                firings[k].append(step)
                next_fire[k] += cadences[k]
        if (step + 1) % check_every == 0:
            new = controller.update(step + 1, seconds, fired)
            for k, c in new.items():
                if c != cadences[k]:  # like the callback: keep the phase of the last firing
                    last = firings[k][-1] if firings[k] else -c
                    cadences[k], next_fire[k] = c, max(step + 1, last + c)
            history.append(
                (step + 1, dict(cadences), controller.window_overhead, controller.realized_overhead)
            )
    return {"history": history, "firings": firings, "cadences": cadences}


def overhead_between(out: dict, costs: dict[str, float], lo: int, hi: int) -> float:
    """Probe seconds / training seconds over steps [lo, hi) (1 s per training step)."""
    spent = sum(costs[k] * sum(lo <= s < hi for s in out["firings"][k]) for k in costs)
    return spent / (hi - lo)


def test_over_budget_cadence_rises_until_overhead_within_budget():
    clock = FakeClock()
    ctrl = CadenceController(budget=0.1, max_every=1000, clock=clock)
    costs = {"step": 1.0, "curv": 30.0}
    out = simulate(ctrl, clock, costs, {"step": 1, "curv": 1}, steps=20_000)
    history = out["history"]
    # cadences only go up while the overhead is above budget
    first = [c for _, c, _, _ in history[:5]]
    assert all(a["curv"] <= b["curv"] and a["step"] <= b["step"] for a, b in zip(first, first[1:]))
    assert first[-1]["curv"] >= 500
    # once settled the overhead is within the budget; the cumulative one comes back under it
    # (the first steps at cadence 1 overspent it)
    assert overhead_between(out, costs, 10_000, 20_000) <= 0.1
    realized = [r for _, _, _, r in history]
    assert realized[10] > 1 and realized[-1] <= 0.1 * 1.02
    # equal shares: each probe uses about half of the budget, so the costlier runs rarer
    final = out["cadences"]
    assert final["curv"] > final["step"] > 1
    assert 1.0 / final["step"] == pytest.approx(0.05, rel=0.25)
    assert 30.0 / final["curv"] == pytest.approx(0.05, rel=0.25)


def test_under_budget_cadence_falls_to_minimum():
    clock = FakeClock()
    ctrl = CadenceController(budget=0.5, min_every=1, max_every=1000, clock=clock)
    out = simulate(ctrl, clock, {"step": 0.01, "noise": 0.02}, {"step": 200, "noise": 500}, 2000)
    assert out["cadences"] == {"step": 1, "noise": 1}
    steps = [c["step"] for _, c, _, _ in out["history"]]
    assert all(a >= b for a, b in zip(steps, steps[1:]))  # monotone decrease
    assert out["history"][-1][3] <= 0.5


def test_spare_budget_goes_to_the_probe_that_needs_it():
    """A cheap probe pinned at its minimum cadence leaves its unused share to the other."""
    clock = FakeClock()
    ctrl = CadenceController(budget=0.2, min_every={"step": 4}, max_every=1000, clock=clock)
    out = simulate(ctrl, clock, {"step": 0.01, "curv": 10.0}, {"step": 4, "curv": 4}, 4000)
    final = out["cadences"]
    assert final["step"] == 4
    # curvature gets 0.2 - 0.01/4 of the budget: cadence ~ 10 / 0.1975 ~ 51
    assert 10.0 / final["curv"] == pytest.approx(0.2 - 0.0025, rel=0.1)


def test_never_starves_a_probe():
    clock = FakeClock()
    ctrl = CadenceController(budget=0.01, max_every=50, clock=clock)
    out = simulate(ctrl, clock, {"curv": 1000.0}, {"curv": 1}, steps=1000)
    assert out["cadences"]["curv"] == 50
    assert all(c["curv"] <= 50 for _, c, _, _ in out["history"])
    gaps = [b - a for a, b in zip(out["firings"]["curv"], out["firings"]["curv"][1:])]
    assert max(gaps) <= 50
    assert out["history"][-1][3] > 0.01  # the budget cannot hold, and the overhead says so


def test_controller_is_deterministic():
    runs = []
    for _ in range(2):
        clock = FakeClock()
        ctrl = CadenceController(budget=0.15, clock=clock)
        runs.append(simulate(ctrl, clock, {"a": 3.0, "b": 0.5}, {"a": 2, "b": 1}, steps=500))
    assert runs[0]["history"] == runs[1]["history"]


def test_changes_are_damped():
    clock = FakeClock()
    ctrl = CadenceController(budget=0.01, max_every=10_000, max_change=4.0, clock=clock)
    out = simulate(ctrl, clock, {"curv": 500.0}, {"curv": 1}, steps=200)
    cadences = [1] + [c["curv"] for _, c, _, _ in out["history"]]
    assert all(b <= 4 * a for a, b in zip(cadences, cadences[1:]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"budget": 0.0},
        {"budget": -1},
        {"budget": math.inf},
        {"budget": True},
        {"budget": 0.1, "max_every": 0},
        {"budget": 0.1, "min_every": 20, "max_every": 10},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="probes.budget"):
        CadenceController(**kwargs)


def test_update_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="start"):
        CadenceController(0.1).update(1, {}, {})


def test_from_value_is_the_command_line_shorthand():
    assert OverheadBudget.from_value(0.25).budget == 0.25
    with pytest.raises(ValueError, match="probes.budget"):
        OverheadBudget.from_value("lots")


# --------------------------------------------------------------------------- the callback


def _data(n: int = 64):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def test_callback_raises_cadences_when_probes_dominate():
    # every clock read advances 1 ns: training looks free, so probes are far over budget
    inputs, targets = _data()
    step, noise = StepProbe(every_n_steps=1), NoiseProbe(every_n_steps=1)
    budget = OverheadBudget(budget=0.1, max_every_n_steps=8, check_every=2, clock=FakeClock(1e-9))
    _, _, _, sink = fit(_net(), inputs, targets, [step, noise, budget], steps=30, batch_size=8)
    assert step.every_n_steps == 8 and noise.every_n_steps == 8
    for key in ("probe/budget", "probe/overhead_realized", "probe/step_every", "probe/noise_every"):
        assert sink.series(key), key
    assert set(sink.series("probe/budget").values()) == {0.1}
    assert max(sink.series("probe/step_every").values()) == 8
    assert budget.final_summary()["every_n_steps"] == {"step": 8, "noise": 8}


def test_callback_lowers_cadences_when_probes_are_cheap():
    # every clock read advances 1000 s: probes look free next to training
    inputs, targets = _data()
    step, noise = StepProbe(every_n_steps=6), NoiseProbe(every_n_steps=6)
    budget = OverheadBudget(budget=0.1, check_every=3, clock=FakeClock(1000.0))
    _, _, _, sink = fit(_net(), inputs, targets, [budget, step, noise], steps=40, batch_size=8)
    assert step.every_n_steps == 1 and noise.every_n_steps == 1
    assert min(sink.series("probe/noise_every").values()) == 1
    assert all(v < 0.1 for v in sink.series("probe/overhead_realized").values())


def test_step_probe_values_stay_exact_across_cadence_changes():
    """The fresh-batch scheme carries a pending update across steps; a change of cadence must
    not finish it on the wrong step. Every logged loss change is a true
    f_{t+1}(x_{t+1}) - f_{t+1}(x_t) (fresh-batch scheme: measured on the next step's batch)."""
    inputs, targets = _data()
    step = StepProbe(every_n_steps=1, scheme="fresh_batch", old_point_keys=False)
    assert step.prefix == "step_fresh"
    # cadences go up (tiny training time), by factors up to 8, over several checks
    budget = OverheadBudget(budget=0.05, max_every_n_steps=5, check_every=3, clock=FakeClock(1e-9))
    net = _net()
    _, module, recorder, sink = fit(net, inputs, targets, [step, budget], steps=40, batch_size=8)
    true_changes = []
    for rec, nxt in zip(recorder.steps, recorder.steps[1:]):
        loss = functional_loss(module.net, nxt.batches[0], supervised(module.loss_fn))
        true_changes.append(float(loss(nxt.params)) - float(loss(rec.params)))
    # next-batch scheme: update t is finished, and logged, at step t + 1 (on that step's batch)
    logged = sink.series("step_fresh/loss_change")
    assert step.every_n_steps == 5 and len(logged) >= 8
    gaps = {b - a for a, b in zip(logged, list(logged)[1:])}
    assert len(gaps) > 1, gaps  # the cadence did change during the run
    for s, value in logged.items():
        assert abs(value - true_changes[s - 1]) < 1e-6, s
    deltas = [
        torch.cat([(r.next_params[k] - r.params[k]).flatten() for k in r.params])
        for r in recorder.steps
    ]
    cos_prev = sink.series("step_fresh/update_cos_prev")  # logged with update t: cos(Δ_t, Δ_{t-1})
    assert cos_prev.keys() <= logged.keys() and len(cos_prev) >= 7
    for s, value in cos_prev.items():
        t = s - 1
        true = torch.nn.functional.cosine_similarity(
            deltas[t].double(), deltas[t - 1].double(), dim=0
        )
        assert abs(value - float(true)) < 1e-6, s


def test_restored_budget_gives_the_probes_their_cadences_back():
    """A resumed job starts with the cadences the budget had reached, not the configured ones:
    ``load_state_dict`` then the trainer's ``setup`` and ``on_train_start`` hooks."""
    step, noise = StepProbe(every_n_steps=3, start_step=2), NoiseProbe(every_n_steps=5)
    budget = OverheadBudget(budget=0.2)
    budget.setup(SimpleNamespace(callbacks=[step, noise, budget]), None, "fit")
    budget.fired = {"step": 4, "noise": 1}
    state = copy.deepcopy(budget.state_dict())

    def resume(state: dict | None) -> tuple[StepProbe, NoiseProbe, OverheadBudget]:
        step, noise = StepProbe(every_n_steps=1), NoiseProbe(every_n_steps=1)  # as configured
        budget = OverheadBudget(budget=0.2)
        trainer = SimpleNamespace(callbacks=[step, noise, budget], global_step=7)
        if state is not None:
            budget.load_state_dict(state)
        budget.setup(trainer, None, "fit")
        budget.on_train_start(trainer, None)
        return step, noise, budget

    step, noise, restored = resume(state)
    assert [t for t in range(7, 20) if step.is_probe_step(t)] == [8, 11, 14, 17]
    assert [t for t in range(7, 20) if noise.is_probe_step(t)] == [10, 15]
    assert restored.fired == {"step": 4, "noise": 1}
    assert restored.final_summary()["every_n_steps"] == {"step": 3, "noise": 5}
    step, noise, _ = resume(None)  # without the state: the configured cadences
    assert step.every_n_steps == noise.every_n_steps == 1


def test_budget_config_composes_with_the_probes(make_cfg):
    from optprobe.run.build import expand_shorthands, instantiate_named

    cfg = make_cfg(["probes=[standard,budget]", "probes.budget.budget=0.2"])
    expand_shorthands(cfg)
    assert "budget" not in cfg.probes  # a callback, not a probe
    objects = instantiate_named(cfg.callbacks, "callbacks")
    budgets = [o for o in objects if isinstance(o, OverheadBudget)]
    assert len(budgets) == 1 and budgets[0].budget == 0.2
    assert budgets[0].controller.max_every == 1000
