"""Peer tools side by side with optprobe, on models each supports.

- Cockpit (economy and full configurations): trained in the same Lightning loop as optprobe's
  probes (a LightningModule whose ``backward`` runs inside Cockpit's context), on the
  BatchNorm-free CNN, at the same cadences; the overhead part of the benchmark times it.
- PyHessian: lambda_max by its power iteration and the trace by its Hutchinson loop, on the
  same batch; HVPs counted by wrapping its ``hessian_vector_product``.
- curvlinops: ``HessianLinearOperator`` with SciPy's ``eigsh`` (Lanczos, ``which="LA"``,
  ``tol=1e-3``, started from the same vector as optprobe's Lanczos) and its
  ``hutchinson_trace``.
- BackPACK: per-example gradients (``BatchGrad``) for the gradient-noise trace, against
  optprobe's noise probe on the same batch.

PyHessian puts the model in eval mode and the others need modules they know, so the peers run
on the MLP (digits) and the CNN (MNIST): no BatchNorm and no dropout, where eval and training
mode give the same loss. Each peer is imported lazily; one that is missing or fails is
recorded with its error and the others still run.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import common
import numpy as np
import torch
from costs import settle
from torch import nn
from torch.nn import functional as F

PEER_MODELS = ("mlp", "cnn")
TOL = 1e-3


class Enough(Exception):
    """Raised from a wrapped HVP once every count of interest is known."""


def as_sequential(setup, net: nn.Module) -> nn.Module:
    """The network as one nn.Sequential of modules (the MLP's flatten becomes a module)."""
    if isinstance(net, nn.Sequential):
        return net
    return nn.Sequential(nn.Flatten(), *net.layers)


# ------------------------------------------------------------------------------- Cockpit


def cockpit_module(setup, net: nn.Module, label: str, cadence: int, start: int):
    """A TrainingModule whose backward runs inside a Cockpit of configuration ``label``."""
    from backpack import extend
    from cockpit import Cockpit
    from cockpit.utils.configuration import configuration
    from cockpit.utils.schedules import linear

    from optprobe.models.lit_module import TrainingModule

    class CockpitModule(TrainingModule):
        def __init__(self) -> None:
            super().__init__(
                net=extend(as_sequential(setup, net)),
                optimizer=setup.optimizer,
                num_classes=setup.num_classes,
                task=setup.task,
            )
            self.cockpit_loss = extend(nn.CrossEntropyLoss())
            self.cockpit = Cockpit(
                list(self.net.parameters()),
                quantities=configuration(label, track_schedule=linear(cadence, offset=start)),
            )
            self._info: dict[str, Any] = {}

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            logits = self.net(inputs)
            loss = self.cockpit_loss(logits, targets)
            self._info = {
                "batch_size": inputs.shape[0],
                "individual_losses": F.cross_entropy(logits, targets, reduction="none"),
                "loss": loss,
                "optimizer": self.trainer.optimizers[0],
            }
            self.train_acc(logits.detach(), targets)
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            self.log("train/acc", self.train_acc, on_step=True, on_epoch=False)
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
            return loss

        def backward(self, loss, *args, **kwargs) -> None:
            step = self.trainer.global_step
            with self.cockpit(step, info=self._info):
                loss.backward(create_graph=self.cockpit.create_graph(step))

    return CockpitModule()


# ------------------------------------------------------------------------------- helpers


def reference_lambda(costs: dict[str, Any] | None) -> float | None:
    if not costs:
        return None
    return costs.get("lambda_max", {}).get("reference")


def pyhessian_rule(values: list[float]) -> int | None:
    """Where PyHessian's power iteration stops: relative change < tol (its own formula)."""
    for i in range(1, len(values)):
        if abs(values[i - 1] - values[i]) / (abs(values[i - 1]) + 1e-6) < TOL:
            return i + 1
    return None


# ------------------------------------------------------------------------------- PyHessian


def run_pyhessian(setup, device, costs, cap: int, trace_samples: int) -> dict[str, Any]:
    import importlib

    # pyhessian/__init__ rebinds the name `hessian` to the class: fetch the module itself
    ph = importlib.import_module("pyhessian.hessian")

    net = as_sequential(setup, setup.fresh_net(device))
    x, y = setup.batch(device)
    ref = reference_lambda(costs)
    criterion = nn.CrossEntropyLoss()
    start = common.now(device)
    comp = ph.hessian(net, criterion, data=(x, y), cuda=device.type == "cuda")
    build_s = common.now(device) - start
    original = ph.hessian_vector_product
    seq: list[float] = []
    state = {"count": 0}

    def counting(grads, params, v):
        hv = original(grads, params, v)
        state["count"] += 1
        if state.get("record"):
            seq.append(float(sum((a * b).sum() for a, b in zip(hv, v))))
            rule = pyhessian_rule(seq)
            oracle = settle(seq, ref, TOL) if ref is not None else None
            if rule is not None and (
                ref is None or (oracle is not None and len(seq) >= oracle + 3)
            ):
                raise Enough
        return hv

    ph.hessian_vector_product = counting
    out: dict[str, Any] = {"graph_build_s": build_s}
    try:
        torch.manual_seed(3)
        state["record"] = True
        start = common.now(device)
        try:
            comp.eigenvalues(maxIter=cap, tol=0.0, top_n=1)
        except Enough:
            pass
        eig_s = common.now(device) - start
        state["record"] = False
        per_hvp = eig_s / max(len(seq), 1)
        rule = pyhessian_rule(seq)
        out["lambda_max"] = {
            "method": "power iteration (PyHessian eigenvalues, tol 1e-3 on relative change)",
            "hvps_rule": rule,
            "value_at_rule": seq[rule - 1] if rule else None,
            "error_at_rule": abs(seq[rule - 1] - ref) / abs(ref) if (rule and ref) else None,
            "hvps_to_1e-3": settle(seq, ref, TOL) if ref is not None else None,
            "hvps_run": len(seq),
            "cap": cap,
            "ms_per_hvp": per_hvp * 1e3,
        }
        if rule:
            out["lambda_max"]["ms_to_rule"] = (build_s + rule * per_hvp) * 1e3
        if out["lambda_max"]["hvps_to_1e-3"]:
            out["lambda_max"]["ms_to_1e-3"] = (
                build_s + out["lambda_max"]["hvps_to_1e-3"] * per_hvp
            ) * 1e3
        state["count"] = 0
        start = common.now(device)
        values = comp.trace(maxIter=trace_samples, tol=-math.inf)
        trace_s = common.now(device) - start
        out["trace"] = {
            "samples": len(values),
            "estimate": float(np.mean(values)),
            "ms_per_sample": trace_s / max(len(values), 1) * 1e3,
            "ms_total": (build_s + trace_s) * 1e3,
        }
    finally:
        ph.hessian_vector_product = original
    return out


# ------------------------------------------------------------------------------- curvlinops


def run_curvlinops(setup, device, costs, trace_samples: int) -> dict[str, Any]:
    from curvlinops import HessianLinearOperator, hutchinson_trace
    from scipy.sparse.linalg import LinearOperator, eigsh

    from optprobe.estimators.matvec import random_vector

    net = as_sequential(setup, setup.fresh_net(device))
    x, y = setup.batch(device)
    params = [p for p in net.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    ref = reference_lambda(costs)
    start = common.now(device)
    op = HessianLinearOperator(
        net, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False
    )
    build_s = common.now(device) - start
    count = {"n": 0}
    scipy_op = op.to_scipy()

    def matvec(v):
        count["n"] += 1
        return scipy_op.matvec(v)

    counted = LinearOperator(scipy_op.shape, matvec=matvec, dtype=np.float64)
    v0 = random_vector("gaussian", dim, torch.Generator().manual_seed(1), "cpu").numpy()
    start = common.now(device)
    value = float(eigsh(counted, k=1, which="LA", tol=TOL, v0=v0, return_eigenvectors=False)[0])
    eig_s = common.now(device) - start
    out: dict[str, Any] = {
        "graph_build_s": build_s,
        "lambda_max": {
            "method": "scipy eigsh (ARPACK Lanczos, which=LA, tol 1e-3, same start vector)",
            "hvps_rule": count["n"],
            "value_at_rule": value,
            "error_at_rule": abs(value - ref) / abs(ref) if ref else None,
            "ms_to_rule": (build_s + eig_s) * 1e3,
            "ms_per_hvp": eig_s / max(count["n"], 1) * 1e3,
        },
    }
    n = min(trace_samples, dim - 1)
    torch.manual_seed(4)
    start = common.now(device)
    estimate = float(hutchinson_trace(op, num_matvecs=n))
    trace_s = common.now(device) - start
    out["trace"] = {
        "samples": n,
        "estimate": estimate,
        "ms_per_sample": trace_s / n * 1e3,
        "ms_total": (build_s + trace_s) * 1e3,
        "note": "the probe vectors go through one vmapped matrix product",
    }
    return out


# ------------------------------------------------------------------------------- BackPACK


def run_backpack(setup, device, costs, repeats: int) -> dict[str, Any]:
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad

    from optprobe.probes.noise import NoiseProbe

    net = as_sequential(setup, setup.fresh_net(device))
    x, y = setup.batch(device)
    plain = copy.deepcopy(net)  # BackPACK's hooks must not meet optprobe's vmap
    model = extend(net)
    lossf = extend(nn.CrossEntropyLoss())
    n = x.shape[0]

    def batch_grads() -> torch.Tensor:
        model.zero_grad()
        loss = lossf(model(x), y)
        with backpack(BatchGrad()):
            loss.backward()
        # mean reduction: BackPACK's rows are the per-example gradients divided by n
        return torch.cat([p.grad_batch.reshape(n, -1) for p in model.parameters()], 1) * n

    seconds = common.time_call(batch_grads, device, repeats)
    rows = batch_grads().to(torch.float64)
    mean = rows.mean(0)
    trace_cov = float(((rows - mean) ** 2).sum()) / (n - 1)
    probe = NoiseProbe(method="per_example")
    ours_s = common.time_call(lambda: probe.measure(common.probed(plain), (x, y)), device, repeats)
    ours = probe.measure(common.probed(plain), (x, y))
    step_ms = costs.get("train_step_ms") if costs else None
    out = {
        "method": "BackPACK BatchGrad (per-example gradients in one backward)",
        "ms": seconds * 1e3,
        "trace_cov": trace_cov,
        "optprobe_ms": ours_s * 1e3,
        "optprobe_trace_cov": ours.trace_cov,
        "rel_diff_trace_cov": abs(trace_cov - ours.trace_cov) / abs(ours.trace_cov),
    }
    if step_ms:
        out["steps"] = seconds * 1e3 / step_ms
        out["optprobe_steps"] = ours_s * 1e3 / step_ms
    return out


# ------------------------------------------------------------------------------- driver


def measure_peers(setup, args, device, costs: dict[str, Any] | None) -> dict[str, Any]:
    versions = common.peer_versions()
    if setup.name not in PEER_MODELS:
        return {"skipped": f"peers run on {', '.join(PEER_MODELS)} (no BatchNorm, no dropout)"}
    out: dict[str, Any] = {}
    trace_needed = (costs or {}).get("trace", {}).get("samples_needed") or 10
    trace_samples = int(min(trace_needed, 50 if args.quick else 200))
    cap = 300 if args.quick else 1000
    jobs = {
        "pyhessian": ("pyhessian", lambda: run_pyhessian(setup, device, costs, cap, trace_samples)),
        "curvlinops": (
            "curvlinops-for-pytorch",
            lambda: run_curvlinops(setup, device, costs, trace_samples),
        ),
        "backpack": (
            "backpack-for-pytorch",
            lambda: run_backpack(setup, device, costs, 5 if args.quick else 10),
        ),
    }
    for name, (dist, job) in jobs.items():
        if versions.get(dist) == "not installed":
            out[name] = {"status": "not installed", "version": None}
            continue
        start = time.perf_counter()
        try:
            out[name] = {"status": "ok", "version": versions[dist], **job()}
        except Exception as err:
            out[name] = {
                "status": "error",
                "version": versions[dist],
                "error": common.error_text(err),
            }
        out[name]["seconds"] = round(time.perf_counter() - start, 2)
    if setup.name == "cnn":
        if versions.get("cockpit-for-pytorch") == "not installed":
            out["cockpit"] = {"status": "not installed"}
        else:
            try:
                import cockpit  # noqa: F401

                out["cockpit"] = {"status": "ok", "version": versions["cockpit-for-pytorch"]}
            except Exception as err:
                out["cockpit"] = {
                    "status": "error",
                    "version": versions["cockpit-for-pytorch"],
                    "error": common.error_text(err),
                }
    if costs:
        lam = costs.get("lambda_max", {})
        per_step = lam.get("lanczos_seconds_per_step")
        hvp_ms = per_step * 1e3 if per_step else costs.get("hvp_ms")
        graph_ms = costs.get("graph_build_steps", 0) * costs.get("train_step_ms", 0)
        k = lam.get("lanczos_hvps_to_1e-3")
        out["optprobe"] = {
            "lambda_max": {
                "method": "optprobe Lanczos (full reorthogonalization), same start vector",
                "hvps_to_1e-3": k,
                "hvps_rule": lam.get("lanczos_hvps_rule"),
                "error_at_rule": lam.get("lanczos_error_at_rule"),
                "ms_per_hvp": hvp_ms,
                "ms_to_1e-3": graph_ms + k * hvp_ms if k and hvp_ms else None,
            },
            "trace": {
                "samples": trace_samples,
                "ms_per_sample": costs.get("hvp_ms"),
                "estimate": costs.get("trace", {}).get("trace_pilot"),
                "note": f"pilot of {costs.get('trace', {}).get('pilot_samples')} samples",
            },
        }
    return out
