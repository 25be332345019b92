"""Every option of every config group composes and instantiates."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import CONF_DIR
from hydra.utils import instantiate

from optprobe.run.build import build, expand_shorthands


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def data_for_model(model: str) -> list[str]:
    """Overrides that give each model a dataset it can read, with tiny settings."""
    if model == "gpt":
        return ["data=shakespeare", "data.max_chars=20000", "data.seq_len=16"]
    if model in {"timm", "resnet18", "vit_tiny"}:
        return ["data=synthetic", "data.input_shape=[3,32,32]", "data.num_samples=64"]
    return ["data=synthetic", "data.num_samples=64"]


@pytest.mark.parametrize("model", options("model"))
def test_model_option_builds_and_runs_forward(make_cfg, model):
    cfg = make_cfg([f"model={model}", *data_for_model(model), "debug=smoke"])
    objects = build(cfg)
    datamodule, module = objects["datamodule"], objects["module"]
    datamodule.setup("fit")
    inputs, targets = next(iter(datamodule.train_dataloader()))
    out = module(inputs)
    assert out.shape[-1] == datamodule.num_classes
    assert torch.isfinite(module.loss_fn(out, targets))


@pytest.mark.parametrize("data", options("data"))
def test_data_option_instantiates(make_cfg, cifar_dir, data):
    extra = {
        "cifar10": [f"paths.data_dir={cifar_dir.parent}", f"data.data_dir={cifar_dir}"],
        "shakespeare": ["data.max_chars=20000", "model=gpt"],
    }.get(data, [])
    cfg = make_cfg([f"data={data}", *extra, "debug=smoke"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert datamodule.num_classes == cfg.data.num_classes


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_factories(make_cfg, optimizer, scheduler):
    cfg = make_cfg([f"optimizer={optimizer}", f"scheduler={scheduler}"])
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = instantiate(cfg.optimizer)(params=params)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    sched = instantiate(cfg.scheduler)(optimizer=opt, total_steps=300)
    lrs = []
    for _ in range(300):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) <= cfg.optimizer.lr * (1 + 1e-6)
    if scheduler == "constant":
        assert lrs == [cfg.optimizer.lr] * 300
    else:
        assert lrs[-1] < 0.2 * cfg.optimizer.lr


@pytest.mark.parametrize(
    "group,option",
    [
        (g, o)
        for g in ("trainer", "callbacks", "probes", "logger", "experiment", "debug")
        for o in options(g)
    ],
)
def test_other_groups_build_a_trainer(make_cfg, cifar_dir, group, option):
    extra = []
    if option == "cifar10_resnet18":
        extra = [f"data.data_dir={cifar_dir}"]
    if option == "lm_gpt":
        extra = ["data.max_chars=20000"]
    cfg = make_cfg([f"{group}={option}", *extra])
    if option == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.accelerator == "gpu"
        pytest.skip("trainer=gpu composes; instantiating it needs a CUDA device")
    expand_shorthands(cfg)
    objects = build(cfg)
    assert isinstance(objects["trainer"], pl.Trainer)
    if group == "logger" and option == "none":
        assert objects["loggers"] == []
    if group == "experiment":
        assert option in cfg.tags


def test_submitit_local_launcher_composes(make_cfg):
    cfg = make_cfg(["hydra/launcher=submitit_local"])
    assert "submitit" in cfg.hydra.launcher._target_.lower()


@pytest.mark.parametrize("launcher", ["slurm", "slurm_gpu"])
def test_slurm_launchers_compose_with_optprobe_requeueing(make_cfg, launcher):
    cfg = make_cfg([f"hydra/launcher={launcher}"])
    assert "SlurmLauncher" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.additional_parameters.signal == "USR1@120"
    assert cfg.hydra.launcher.max_num_timeout == 0  # optprobe, not submitit, requeues
    assert (cfg.hydra.launcher.gpus_per_node or 0) == (1 if launcher == "slurm_gpu" else 0)


def test_hydra_dirs_have_microseconds():
    text = (CONF_DIR / "hydra" / "default.yaml").read_text()
    assert text.count("%f") == 2
