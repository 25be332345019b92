"""Job folders written before optprobe 0.2 still resume and analyse: the ``_target_`` paths
their config.yaml names still import, and their checkpoints' probe states (saved under class
names, without the metric history) are read."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import get_class, get_method

from optprobe.run.folder import JobFolder
from optprobe.run.job import train

OLD_TO_NEW = {
    "optprobe.checkpointing.LastStepCheckpoint": "optprobe.callbacks.checkpoints.LastStepCheckpoint",
    "optprobe.checkpointing.PreemptionCheckpoint": "optprobe.callbacks.preemption.PreemptionCheckpoint",
    "optprobe.guards.NonFiniteLossGuard": "optprobe.callbacks.non_finite.NonFiniteLossGuard",
    "optprobe.guards.OutputDirCheck": "optprobe.run.hydra_callbacks.OutputDirCheck",
    "optprobe.sweep_summary.SweepSummaryCallback": "optprobe.run.hydra_callbacks.SweepSummaryCallback",
    "optprobe.run_store.RunStoreLogger": "optprobe.run.run_store.RunStoreLogger",
    "optprobe.probes.budget.OverheadBudget": "optprobe.callbacks.budget.OverheadBudget",
}


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_target_paths_import_the_same_classes(old):
    assert get_class(old) is get_class(OLD_TO_NEW[old])


def test_old_wandb_logger_path_is_the_same_function():
    assert get_method("optprobe.wandb_setup.wandb_logger") is get_method(
        "optprobe.run.wandb_setup.wandb_logger"
    )


RUN = ["debug=smoke", "probes=[step]", "trainer.max_epochs=-1", "trainer.max_steps=8"]


def test_old_checkpoint_resumes_with_probe_state_and_whole_run_verdicts(make_cfg):
    whole = make_cfg(RUN, name="whole")
    train(whole)
    first = make_cfg([*RUN, "trainer.max_steps=4"], name="old")
    train(first)
    folder = JobFolder(first.paths.output_dir)
    ckpt = torch.load(folder.last_checkpoint, weights_only=False)
    # as optprobe 0.1 wrote it: probe state under the class name, no metric history
    ckpt["callbacks"]["optprobe.StepProbe"] = ckpt["callbacks"].pop("optprobe.probe.step")
    del ckpt["callbacks"]["optprobe.MetricHistory"]
    torch.save(ckpt, folder.last_checkpoint)
    train(make_cfg([*RUN, f"ckpt_path={folder.last_checkpoint}"], name="old"))
    expected = JobFolder(whole.paths.output_dir).read_verdicts()
    assert folder.read_verdicts()["assumptions"] == expected["assumptions"]
    steps = folder.read_summary()["probes"]["step"]["held"]["inst_gap:valid:same_batch"]["checked"]
    assert steps == 8  # the probe's running counts continued from the old state
