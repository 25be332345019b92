"""Every option of every config group composes and instantiates."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from optprobe.optim.factory import build_optimizer
from optprobe.optim.modes import set_mode
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


# classes (vocabulary size for shakespeare) of each data set, known independently of the configs
NUM_CLASSES = {"cifar10": 10, "digits": 10, "mnist5k": 10, "shakespeare": 84, "synthetic": 10}


@pytest.mark.parametrize("data", options("data"))
def test_data_option_instantiates(make_cfg, cifar_dir, data):
    extra = {
        "cifar10": [f"paths.data_dir={cifar_dir.parent}", f"data.data_dir={cifar_dir}"],
        "shakespeare": ["data.max_chars=20000", "model=gpt"],
    }.get(data, [])
    cfg = make_cfg([f"data={data}", *extra, "debug=smoke"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    # the option's num_classes is the data set's, and every target of the data is a class
    assert cfg.data.num_classes == datamodule.num_classes == NUM_CLASSES[data]
    for targets in (datamodule.train_targets, datamodule.val_targets):
        assert 0 <= int(targets.min()) and int(targets.max()) < NUM_CLASSES[data]
    if data == "shakespeare":
        assert len(datamodule.vocab) == NUM_CLASSES[data]
    else:  # every class occurs in the (smoke-sized) training split
        assert len(torch.unique(datamodule.train_targets)) == NUM_CLASSES[data]


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_factories(make_cfg, optimizer, scheduler):
    cfg = make_cfg([f"optimizer={optimizer}", f"scheduler={scheduler}"])
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = build_optimizer(instantiate(cfg.optimizer), net)
    assert isinstance(opt, torch.optim.Optimizer)
    set_mode(opt, train=True)  # Schedule-Free steps only in train mode
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
    if group == "experiment" and "resnet18" in option:
        extra = [f"data.data_dir={cifar_dir}"]
    if group == "experiment" and "gpt" in option:
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


def launch_dirs(log_dir: Path) -> tuple[str, str]:
    """The run and sweep folders a ``python train.py`` launched now would get: the config
    composed afresh (a new launch, so Hydra's cached ``${now:...}`` is evaluated again) and
    the folders resolved as Hydra's ``run_job`` does (``OmegaConf.select``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", [f"paths.log_dir={log_dir}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    return str(OmegaConf.select(cfg, "hydra.run.dir")), str(
        OmegaConf.select(cfg, "hydra.sweep.dir")
    )


def test_launches_in_the_same_second_get_their_own_folders(tmp_path):
    for _ in range(50):  # until both launches fall within one wall-clock second
        started = time.time()
        first, second = launch_dirs(tmp_path), launch_dirs(tmp_path)
        if int(time.time()) == int(started):
            break
    else:
        pytest.skip("two config compositions never fit in one second on this machine")
    for a, b, kind in ((first[0], second[0], "runs"), (first[1], second[1], "multiruns")):
        assert Path(a).parent == Path(b).parent == tmp_path / "train" / kind
        assert a != b
        Path(a).mkdir(parents=True)  # exist_ok=False: fails if the folders coincide
        Path(b).mkdir(parents=True)
