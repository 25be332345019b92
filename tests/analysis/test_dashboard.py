"""The W&B dashboard as code: its specification validates against wandb-workspaces' own models
(a round trip through them changes nothing), and it names only keys the runs logged."""

from __future__ import annotations

import json
import os

import pytest
import wandb
from job_harness import run_train
from wandb_workspaces.workspaces import interface, internal

from optprobe.analysis.dashboard import (
    OPTIMIZER,
    STEP_KEY,
    VERDICTS_TABLE,
    RunKeys,
    build_workspace,
    panel_keys,
    verdict_key,
)
from optprobe.analysis.dashboard_spec import (
    from_spec,
    logged_keys,
    offline_runs,
    read_spec,
    save,
    spec,
    view_name,
)
from optprobe.analysis.verdicts import FAMILY_MAIN_KEYS
from optprobe.assumptions import all_variants
from optprobe.cli.dashboard import main

HEADLINE = next(v for v in all_variants() if v.headline and v.assumption.id == "inst_gap")


def round_trip(workspace) -> dict:
    """The spec after JSON text and the library's models (internal.View, then Workspace)."""
    return spec(from_spec(json.loads(json.dumps(spec(workspace)))))


@pytest.fixture
def no_wandb(monkeypatch, tmp_path):
    """No W&B variables and a HOME without ~/.netrc: no credentials."""
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))


def test_registry_dashboard_round_trips_and_covers_every_verdict():
    workspace = build_workspace("me", "optprobe", "sweep-1")
    assert round_trip(workspace) == spec(workspace)
    names = [s.name for s in workspace.sections]
    assert names[1:-2] == [f"{f}/*" for f in FAMILY_MAIN_KEYS]  # one section per probe family
    metrics, config = panel_keys(workspace)
    assert {verdict_key(v) for v in all_variants()} <= metrics
    assert config == {OPTIMIZER}
    runset = spec(workspace)["spec"]["section"]["runSets"][0]
    assert runset["filters"]["filters"] == [
        {
            "key": {"section": "run", "name": "group"},
            "op": "=",
            "value": "sweep-1",
            "disabled": False,
        }
    ]  # the sweep's runs only
    assert runset["grouping"] == [{"section": "config", "name": "choices.value.optimizer"}]


def test_panels_name_only_logged_keys():
    logged = {STEP_KEY, "step/inst_gap", verdict_key(HEADLINE), "const/L0", "train/loss"}
    run = RunKeys("r1", "sweep-1", "mlp/digits", frozenset(logged))
    every = panel_keys(build_workspace("me", "optprobe", "sweep-1"))[0]
    assert every - logged  # the registry names more: the logged keys are what restrict it
    workspace = build_workspace("me", "optprobe", "sweep-1", [run])
    metrics, _ = panel_keys(workspace)
    assert metrics == logged  # every logged key that the registry knows has a panel
    assert [s.name for s in workspace.sections] == [
        "Verdicts by optimizer (headline)",
        "step/*",
        "Constants vs performance",
    ]
    assert round_trip(workspace) == spec(workspace)


def test_runs_are_coloured_by_setting():
    keys = frozenset({STEP_KEY})
    runs = [
        RunKeys("a", "g", "mlp/digits", keys),
        RunKeys("b", "g", "mlp/digits", keys),
        RunKeys("c", "g", "cnn/mnist5k", keys),
    ]
    colors = {
        k: s.color
        for k, s in build_workspace("e", "p", "g", runs).runset_settings.run_settings.items()
    }
    assert colors["a"] == colors["b"] != colors["c"]


def test_a_table_is_named_by_its_key():
    read_back = ["verdicts._type", "verdicts.path", "verdicts.nrows", "step/inst_gap_ema0.9"]
    assert logged_keys([*read_back, "_step", "_wandb.runtime"]) == {
        VERDICTS_TABLE,
        "step/inst_gap_ema0.9",
    }


def test_view_name_is_stable_per_dashboard():
    one, again = build_workspace("e", "p", "g"), build_workspace("e", "p", "g")
    assert view_name(one) == view_name(again) != view_name(build_workspace("e", "p", "h"))


def test_cli_without_credentials_writes_the_spec_and_says_how_to_apply(no_wandb, tmp_path, capsys):
    out = tmp_path / "dashboard.json"
    assert main(["--entity", "me", "--group", "sweep-1", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "no credentials" in said and f"optprobe-dashboard --apply {out}" in said
    assert spec(read_spec(out)) == json.loads(out.read_text())
    with pytest.raises(SystemExit, match="cannot apply .*no credentials"):
        main(["--apply", str(out)])
    out.write_text('{"spec": 1}')
    with pytest.raises(SystemExit, match="not a W&B workspace specification"):
        main(["--apply", str(out)])


@pytest.mark.slow
def test_dashboard_of_an_offline_sweep_names_only_logged_keys(no_wandb, tmp_path, capsys):
    done = run_train(
        ["-m", "optimizer=sgd,adam", "logger=wandb", "debug=smoke"],
        tmp_path,
        env_extra={"HOME": str(tmp_path)},
        timeout=600,
        without_wandb_env=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = offline_runs(tmp_path)
    assert len(runs) == 2 and runs[0].group and runs[0].group == runs[1].group
    group = runs[0].group
    out = tmp_path / "dashboard.json"
    args = ["--entity", "me", "--group", group, "--runs", str(tmp_path), "--out", str(out)]
    assert main(args) == 0
    assert "--apply" in capsys.readouterr().out
    workspace = read_spec(out)
    assert spec(workspace) == json.loads(out.read_text())  # the library's models accept it
    metrics, config = panel_keys(workspace)
    logged = set().union(*(r.keys for r in runs))
    assert metrics <= logged, f"panels name keys no run logged: {sorted(metrics - logged)}"
    assert config <= set().union(*(r.config_keys for r in runs))
    assert {k for k in logged if k.startswith("verdict/")} <= metrics
    families = {k.split("/")[0] for k in logged} & set(FAMILY_MAIN_KEYS)
    assert {"step", "curv", "noise"} <= families
    assert {f"{f}/*" for f in families} <= {s.name for s in workspace.sections}
    assert set(workspace.runset_settings.run_settings) == {r.run_id for r in runs}


def test_saving_again_updates_the_same_view(monkeypatch):
    """The server stubbed at the library's two calls: look the view up, upsert it."""
    stored: dict[str, str] = {}  # view name -> id, as the server keeps them
    sent = []

    def from_name(entity, project, name):
        if name not in stored:
            raise ValueError(f"Workspace `{name}` not found in project `{project}`")
        return type("View", (), {"id": stored[name]})()

    def upsert(view):
        sent.append((view.name, view.id))
        stored.setdefault(view.name, f"id-{len(stored)}")
        return {"upsertView": {"view": {"name": view.name, "id": stored[view.name]}}}

    monkeypatch.setattr(internal.View, "from_name", from_name)
    monkeypatch.setattr(internal, "upsert_view2", upsert)
    monkeypatch.setattr(wandb, "Api", lambda: None)
    monkeypatch.setattr(interface, "get_app_url", lambda api: "https://wandb.example")
    first = save(build_workspace("me", "optprobe", "sweep-1"))
    again = save(build_workspace("me", "optprobe", "sweep-1"))
    other = save(build_workspace("me", "optprobe", "sweep-2"))
    name = view_name(build_workspace("me", "optprobe", "sweep-1"))
    assert sent[:2] == [(name, ""), (name, "id-0")]  # created, then updated in place
    assert sent[2][0] != name and sent[2][1] == ""
    assert first == again == f"https://wandb.example/me/optprobe?nw={name[3:-2]}" != other
