"""The probes in a researcher's own code: a LightningModule with dict batches and a plain loop.

Ground truths: a dense Hessian and brute-force per-example gradients of the user's loss on the
user's dict batch; the same probes driven by Lightning and by the plain loop on the same
trajectory; the trajectory without probes; a training loss the probes' loss lacks.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections import UserDict

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from optprobe.integration.lightning import lightning_probes
from optprobe.integration.plain_loop import LoopProbes
from optprobe.probes.loss_check import TrainingLossMismatch

BATCH, STEPS = 16, 6


class DictData(Dataset):
    """Seeded 2-class data served as dicts, with a string leaf the probes must carry along."""

    def __init__(self, n: int = 64, batch_encoding: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 5, generator=g)
        self.y = (self.x[:, 0] + 0.3 * torch.randn(n, generator=g) > 0).long()
        self.batch_encoding = batch_encoding

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.x[i], "label": self.y[i]}


class Encoding(UserDict):
    """A Hugging Face ``BatchEncoding`` stand-in: a UserDict, not a dict."""


def collate_encoding(items: list[dict]) -> Encoding:
    return Encoding(
        features=torch.stack([i["features"] for i in items]),
        label=torch.stack([i["label"] for i in items]),
        source="digits-like",
    )


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2))


def user_loss(net: nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(net(batch["features"]), batch["label"])


class UserModule(pl.LightningModule):
    """Someone's module: the network is ``self.model``, batches are dicts, no optprobe base."""

    def __init__(self, net: nn.Module, penalty: float = 0.0, lr: float = 0.2) -> None:
        super().__init__()
        self.model, self.penalty, self.lr = net, penalty, lr

    def training_step(self, batch, batch_idx):
        loss = user_loss(self.model, batch)
        return loss + self.penalty * sum(p.pow(2).sum() for p in self.model.parameters())

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.lr)


def loader(collate=None) -> DataLoader:
    return DataLoader(DictData(), batch_size=BATCH, shuffle=False, collate_fn=collate)


def fit_lightning(
    net, callbacks, tmp_path, accumulate: int = 1, collate=None, penalty=0.0, **trainer_kw
):
    """Fit ``UserModule(net, penalty)`` on the dict batches for STEPS steps (no logger)."""
    trainer = pl.Trainer(
        max_steps=STEPS,
        callbacks=callbacks,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **trainer_kw,
    )
    module = UserModule(net, penalty=penalty)
    trainer.fit(module, loader(collate))
    return module


PROBES = {
    "step": {},
    "curvature": {"every_n_steps": 3, "lanczos_iters": 30, "tol": 1e-6},
    "noise": {"every_n_steps": 2},
}


def metrics(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "metrics.csv").set_index("step")


def flat_params(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def dense_hessian(net: nn.Module, batch) -> torch.Tensor:
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]

    def loss_of_flat(flat):
        parts = dict(zip(names, (t.view(s) for t, s in zip(flat.split(sizes), shapes))))
        return user_loss(lambda x: torch.func.functional_call(net, parts, (x,)), batch)

    return torch.autograd.functional.hessian(loss_of_flat, flat_params(net).double())


def test_dict_batch_curvature_and_noise_match_dense_ground_truth(tmp_path):
    """λ_max, λ_min of the user's loss on the user's first dict batch equal a dense Hessian's
    eigenvalues; the per-example noise trace equals a brute-force loop over examples."""
    net = make_net()
    start = copy.deepcopy(net).double()
    callbacks = lightning_probes(net="model", loss=user_loss, probes=PROBES, folder=tmp_path / "r")
    fit_lightning(net, callbacks, tmp_path, precision="64-true")
    rows = metrics(tmp_path / "r")
    batch = next(iter(loader()))
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    eig = torch.linalg.eigvalsh(dense_hessian(start, batch))
    assert rows.loc[0, "curv/lambda_max"] == pytest.approx(float(eig[-1]), rel=1e-4)
    assert rows.loc[0, "curv/lambda_min"] == pytest.approx(float(eig[0]), abs=1e-4 * float(eig[-1]))
    per_example = []
    for i in range(BATCH):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(user_loss(start, one), list(start.parameters()))
        per_example.append(torch.cat([g.reshape(-1) for g in grads]))
    rows_g = torch.stack(per_example)
    trace_cov = float(((rows_g - rows_g.mean(0)) ** 2).sum() / (BATCH - 1))
    assert rows.loc[0, "noise/trace_cov"] == pytest.approx(trace_cov, rel=1e-8)


def test_probes_observe_a_user_module(tmp_path):
    """The user's trajectory is the same, to the bit, with and without the probes."""
    plain, probed = make_net(), make_net()
    fit_lightning(plain, [], tmp_path / "plain")
    callbacks = lightning_probes(net="model", loss=user_loss, probes=PROBES, folder=tmp_path / "r")
    fit_lightning(probed, callbacks, tmp_path / "probed")
    assert torch.equal(flat_params(plain), flat_params(probed))


def test_lightning_writes_the_job_folder_the_analysis_reads(tmp_path):
    callbacks = lightning_probes(net="model", loss=user_loss, probes=PROBES, folder=tmp_path / "r")
    fit_lightning(make_net(), callbacks, tmp_path)
    folder = tmp_path / "r"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == STEPS
    assert summary["probes"]["step"]["loss_check"]["status"] == "equal"
    verdicts = json.loads((folder / "verdicts.json").read_text())
    assert any(a["id"].startswith("inst_gap") for a in verdicts["assumptions"])
    rows = metrics(folder)
    assert sorted(rows.index) == list(range(STEPS))
    assert rows["train/loss"].notna().all()
    from optprobe.analysis.runs import load_local_runs

    (record,) = load_local_runs(tmp_path)
    assert record.status == "completed" and record.config["choices.optimizer"] == "sgd"


def test_plain_loop_matches_lightning_step_for_step(tmp_path):
    """The plain loop drives the same probes in Lightning's order: the same values at the
    same steps, under gradient accumulation over two micro-batches too."""
    for accumulate in (1, 2):
        callbacks = lightning_probes(
            net="model", loss=user_loss, probes=PROBES, folder=tmp_path / f"l{accumulate}"
        )
        fit_lightning(make_net(), callbacks, tmp_path, accumulate=accumulate)
        net = make_net()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
        micro = itertools.cycle(loader())  # epochs in the same order (no shuffling)
        with LoopProbes(
            net, user_loss, probes=PROBES, folder=tmp_path / f"p{accumulate}"
        ) as probes:
            for _ in range(STEPS):
                for _ in range(accumulate):
                    batch = next(micro)
                    loss = probes.loss(batch) / accumulate
                    loss.backward()
                    probes.accumulate(batch, loss, optimizer)
                with probes.step(None, None, optimizer):
                    optimizer.step()
                optimizer.zero_grad()
        lit, loop = metrics(tmp_path / f"l{accumulate}"), metrics(tmp_path / f"p{accumulate}")
        keys = [k for k in lit.columns if k.split("/")[0] in ("step", "curv", "noise", "train")]
        keys = [k for k in keys if k not in ("probe/overhead", "probe/seconds")]
        assert {"step/inst_gap", "curv/lambda_max", "noise/trace_cov", "train/loss"} <= set(keys)
        pd.testing.assert_frame_equal(lit[keys], loop[keys], rtol=1e-6, check_like=True)


def test_a_penalty_the_probes_lack_is_refused_and_the_run_kept(tmp_path):
    callbacks = lightning_probes(
        net="model", loss=user_loss, probes=["step", "curvature"], folder=tmp_path / "r"
    )
    with pytest.raises(TrainingLossMismatch, match="probes' loss is .* backpropagated"):
        fit_lightning(make_net(), callbacks, tmp_path, penalty=0.01)
    text = (tmp_path / "r" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert summary["status"] == "failed" and "TrainingLossMismatch" in summary["error"]
    assert not (tmp_path / "r" / "verdicts.json").exists()


def test_a_penalty_the_probes_include_passes(tmp_path):
    """The positive control of the check: the same penalty in both losses is accepted."""

    def penalised(net, batch):
        return user_loss(net, batch) + 0.01 * sum(p.pow(2).sum() for p in net.parameters())

    callbacks = lightning_probes(
        net="model", loss=penalised, probes=["step"], folder=tmp_path / "r"
    )
    fit_lightning(make_net(), callbacks, tmp_path, penalty=0.01)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["probes"]["step"]["loss_check"]["status"] == "equal"


def test_plain_loop_refuses_a_loss_that_is_not_the_backpropagated_one(tmp_path):
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    probes = LoopProbes(net, user_loss, probes=["step"], folder=tmp_path / "p")
    batch = next(iter(loader()))
    loss = 2.0 * probes.loss(batch)  # e.g. a forgotten loss scale
    loss.backward()
    with pytest.raises(TrainingLossMismatch, match="difference"):
        with probes.step(batch, loss, optimizer):
            optimizer.step()


def test_batch_encoding_with_a_string_leaf(tmp_path):
    """A UserDict batch (as Hugging Face tokenizers return) with a non-tensor entry: every
    probe runs, per-example gradients included."""
    callbacks = lightning_probes(net="model", loss=user_loss, probes=PROBES, folder=tmp_path / "r")
    fit_lightning(make_net(), callbacks, tmp_path, collate=collate_encoding)
    rows = metrics(tmp_path / "r")
    assert rows.loc[0, ["curv/lambda_max", "noise/trace_cov", "step/inst_gap"]].notna().all()


def test_bf16_autocast_passes_the_check_in_its_precision(tmp_path):
    callbacks = lightning_probes(
        net="model", loss=user_loss, probes=["step"], folder=tmp_path / "r"
    )
    fit_lightning(make_net(), callbacks, tmp_path, precision="bf16-mixed")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    check = summary["probes"]["step"]["loss_check"]
    assert check["status"] == "equal" and check["rel_tol"] == 1e-2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"net": "network"}, "attribute `network` of UserModule is NoneType"),
        ({"net": "model", "loss": "no_such_method"}, "no method `no_such_method"),
    ],
)
def test_a_wrong_target_is_named_before_training(tmp_path, kwargs, message):
    callbacks = lightning_probes(probes=["step"], folder=tmp_path / "r", **kwargs)
    trainer = pl.Trainer(max_steps=2, callbacks=callbacks, logger=False, enable_checkpointing=False)
    module = UserModule(make_net())
    with pytest.raises(TypeError, match=message):
        trainer.fit(module, loader())
    assert module.global_step == 0


def test_unknown_probe_name():
    with pytest.raises(ValueError, match="no probe named 'curv'.*curvature"):
        lightning_probes(probes=["curv"])


def test_analysis_reads_a_lightning_log_folder(tmp_path):
    """With the user's own logger the job folder lands in the logger's version folder, and the
    analysis of ``lightning_logs/`` finds each version's run."""
    from pytorch_lightning.loggers import CSVLogger

    from optprobe.analysis.runs import load_local_runs

    for _ in range(2):
        trainer = pl.Trainer(
            max_steps=3,
            callbacks=lightning_probes(net="model", loss=user_loss, probes=["step"]),
            logger=CSVLogger(save_dir=str(tmp_path)),
            enable_checkpointing=False,
            enable_progress_bar=False,
        )
        trainer.fit(UserModule(make_net()), loader())
    records = load_local_runs(tmp_path / "lightning_logs")
    assert sorted(r.run_id for r in records) == ["version_0/optprobe", "version_1/optprobe"]
    assert all(r.status == "completed" and len(r.history) == 3 for r in records)
