"""Cost per estimate, in units of one training step, on one fixed batch.

- training step: median seconds of ``zero_grad; loss = f(net(x)); backward; SGD step`` (bf16
  autocast when the run uses it); the unit of every cost here.
- one HVP: median seconds of one Hessian-vector product by double backward (the probes'
  default), after the gradient graph is built (that build, one forward + backward with
  ``create_graph``, is reported separately), and by forward-over-reverse where it runs.
- lambda_max to 1e-3 relative error: one Lanczos run (full reorthogonalization) from a Gaussian
  start vector and power iteration from the *same* vector. The reference is Lanczos' top Ritz
  value after ``K`` steps (its residual bound is reported). Counted: HVPs until the estimate is
  and stays within 1e-3 of the reference ("oracle"), and HVPs until each method's own stopping
  rule fires (Lanczos: Ritz residual bound <= 1e-3 relative; power iteration: relative change of
  the Rayleigh quotient <= 1e-3, as ``optprobe.estimators.lanczos.power_iteration``), with the
  true error at that point.
- trace at a given standard error: a pilot of Rademacher samples z^T H z gives their standard
  deviation; the samples needed for a relative standard error ``--trace-rel-se`` (default 5 %)
  follow, and the cost is graph build + that many HVPs.
- per-example gradients: the noise probe's estimate on the batch (``method=auto``: vmap
  per-example gradients, or micro-batches under BatchNorm in training mode), and plain vmap
  per-example gradients where the network allows them.
"""

from __future__ import annotations

import math
from typing import Any

import common
import torch
from torch import Tensor

TOL = 1e-3


def lanczos_budget(name: str, quick: bool) -> tuple[int, int]:
    """(Lanczos reference steps, power-iteration cap) per model."""
    if name == "resnet18":
        return (30, 40) if quick else (60, 150)
    if name == "gpt":
        return (50, 150) if quick else (80, 400)
    return (80, 300) if quick else (100, 1000)


def train_step_seconds(setup, device, amp: str, repeats: int) -> float:
    net = setup.fresh_net(device).train()
    x, y = setup.batch(device)
    opt = setup.optimizer(net.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = common.loss_fn(net(x), y)
        loss.backward()
        opt.step()

    return common.time_call(step, device, repeats, warmup=2)


def settle(values: list[float], ref: float, tol: float) -> int | None:
    """1-based index from which every value is within ``tol`` relative of ``ref``."""
    ok = [abs(v - ref) <= tol * abs(ref) for v in values]
    if not ok or not ok[-1]:
        return None
    k = len(ok)
    while k > 0 and ok[k - 1]:
        k -= 1
    return k + 1


def _ritz_values(alphas: Tensor, betas: Tensor) -> tuple[list[float], list[float], Any, Any]:
    """Extreme Ritz values after each Lanczos step, and the first step at which the residual
    bound of λ_max (and of both extremes) fell to ``TOL``, relative (None if never)."""
    k_run = alphas.numel()
    ritz_max, ritz_min, rule_max, rule_both = [], [], None, None
    for k in range(1, k_run + 1):
        t = torch.diag(alphas[:k])
        if k > 1:
            t = t + torch.diag(betas[: k - 1], 1) + torch.diag(betas[: k - 1], -1)
        evals, evecs = torch.linalg.eigh(t)
        ritz_max.append(float(evals[-1]))
        ritz_min.append(float(evals[0]))
        if k < k_run:
            beta = float(betas[k - 1])
            bound_max = abs(beta * float(evecs[-1, -1])) / max(abs(float(evals[-1])), 1e-300)
            bound_min = abs(beta * float(evecs[-1, 0])) / max(abs(float(evals[0])), 1e-300)
            if rule_max is None and bound_max <= TOL:
                rule_max = k
            if rule_both is None and bound_max <= TOL and bound_min <= TOL:
                rule_both = k
    return ritz_max, ritz_min, rule_max, rule_both


def _power_iteration(matvec, dim: int, device, ref: float, power_cap: int):
    """Rayleigh quotients of power iteration from Lanczos' start vector, the step at which its
    own stop rule (relative change ≤ ``TOL``) fired, and its seconds."""
    from optprobe.estimators.matvec import random_vector

    v = random_vector("gaussian", dim, torch.Generator().manual_seed(1), device)
    v = v / torch.linalg.vector_norm(v)
    rayleigh: list[float] = []
    rule_power = None
    start = common.now(device)
    for n in range(1, power_cap + 1):
        w = matvec(v).to(torch.float64)
        rayleigh.append(float(v @ w))
        if rule_power is None and n > 1:
            if abs(rayleigh[-1] - rayleigh[-2]) <= TOL * abs(rayleigh[-1]):
                rule_power = n
        norm = float(torch.linalg.vector_norm(w))
        if norm == 0:
            break
        v = w / norm
        oracle = settle(rayleigh, ref, TOL)
        if rule_power is not None and oracle is not None and n >= oracle + 3:
            break  # both counts known (the oracle one has held for a few steps)
    return rayleigh, rule_power, common.now(device) - start


def lambda_max_study(matvec, dim: int, device, k_ref: int, power_cap: int, hvp_s: float):
    """Lanczos vs power iteration from one start vector (see the module docstring)."""
    from optprobe.estimators.lanczos import lanczos_tridiagonal

    start = common.now(device)
    alphas, betas, basis = lanczos_tridiagonal(
        matvec,
        dim,
        k_ref,
        generator=torch.Generator().manual_seed(1),
        device=device,
        start="gaussian",
    )
    lanczos_s = common.now(device) - start
    del basis
    k_run = alphas.numel()
    ritz_max, ritz_min, rule_max, rule_both = _ritz_values(alphas, betas)
    ref = ritz_max[-1]
    ref_bound = None
    if k_run > 1 and betas.numel() >= k_run - 1:
        # bound of the last step is unknown without one more matvec; use the previous one's
        ref_bound = abs(ritz_max[-1] - ritz_max[-2]) / max(abs(ref), 1e-300)
    rayleigh, rule_power, power_s = _power_iteration(matvec, dim, device, ref, power_cap)
    lanczos_oracle = settle(ritz_max, ref, TOL)
    power_oracle = settle(rayleigh, ref, TOL)
    out = {
        "reference": ref,
        "reference_steps": k_run,
        "reference_last_change": ref_bound,
        "lambda_min_ritz": ritz_min[-1],
        "lanczos_hvps_to_1e-3": lanczos_oracle,
        "lanczos_hvps_rule": rule_max,
        "lanczos_error_at_rule": (
            abs(ritz_max[rule_max - 1] - ref) / abs(ref) if rule_max else None
        ),
        "lanczos_hvps_rule_both_extremes": rule_both,
        "lanczos_seconds_per_step": lanczos_s / k_run,
        "power_hvps_to_1e-3": power_oracle,
        "power_hvps_run": len(rayleigh),
        "power_cap": power_cap,
        "power_hvps_rule": rule_power,
        "power_error_at_rule": (
            abs(rayleigh[rule_power - 1] - ref) / abs(ref) if rule_power else None
        ),
        "power_final": rayleigh[-1] if rayleigh else None,
        "power_seconds_per_step": power_s / max(len(rayleigh), 1),
        "dominant_is_negative": abs(ritz_min[-1]) > abs(ref),
    }
    if lanczos_oracle is not None:
        if power_oracle is not None:
            out["hvp_ratio_lanczos_over_power"] = lanczos_oracle / power_oracle
        else:  # power iteration did not get there within its cap: an upper bound
            out["hvp_ratio_lanczos_over_power_upper_bound"] = lanczos_oracle / len(rayleigh)
        out["lanczos_steps_to_1e-3"] = lanczos_oracle * hvp_s
    return out


def trace_study(matvec, dim: int, device, samples: int, rel_se: float) -> dict[str, Any]:
    from optprobe.estimators.matvec import random_vector

    gen = torch.Generator().manual_seed(2)
    values = []
    for _ in range(samples):
        z = random_vector("rademacher", dim, gen, device)
        values.append(float(z @ matvec(z).to(torch.float64)))
    vals = torch.tensor(values, dtype=torch.float64)
    mean, sd = float(vals.mean()), float(vals.std(correction=1))
    needed = max(2, math.ceil((sd / (rel_se * abs(mean))) ** 2)) if mean != 0 else None
    return {
        "pilot_samples": samples,
        "trace_pilot": mean,
        "sample_sd": sd,
        "rel_se_of_pilot": sd / math.sqrt(samples) / abs(mean) if mean else None,
        "target_rel_se": rel_se,
        "samples_needed": needed,
    }


def measure_costs(setup, args, device) -> dict[str, Any]:
    from optprobe.estimators.functional import (
        forward_mode_blocker,
        functional_loss,
        hvp_double_backward,
        hvp_forward_over_reverse,
        trainable_params,
    )
    from optprobe.estimators.per_example import per_example_grads, per_example_grads_supported
    from optprobe.probes.noise import NoiseProbe

    quick = args.quick
    repeats = 5 if quick else 10
    step_s = train_step_seconds(setup, device, args.amp, repeats)
    net = setup.fresh_net(device).train()
    x, y = setup.batch(device)
    params = {k: p.detach() for k, p in trainable_params(net).items()}
    dim = sum(p.numel() for p in params.values())
    fn = functional_loss(net, (x, y), common.batch_loss)
    graph_s = common.time_call(lambda: hvp_double_backward(fn, params), device, 3)
    matvec = hvp_double_backward(fn, params)
    v = torch.randn(dim, dtype=torch.float64, device=device)
    hvp_s = common.time_call(lambda: matvec(v), device, repeats)
    out: dict[str, Any] = {
        "unit": "one training step (forward, backward, SGD update on the batch)",
        "train_step_ms": step_s * 1e3,
        "num_params": dim,
        "graph_build_steps": graph_s / step_s,
        "hvp_steps": hvp_s / step_s,
        "hvp_ms": hvp_s * 1e3,
    }
    blocker = forward_mode_blocker(net)
    if blocker is None:
        try:
            fwd = hvp_forward_over_reverse(fn, params)
            out["hvp_forward_over_reverse_steps"] = (
                common.time_call(lambda: fwd(v), device, repeats) / step_s
            )
        except Exception as err:
            out["hvp_forward_over_reverse_error"] = common.error_text(err)
    else:
        out["hvp_forward_over_reverse_error"] = blocker
    k_ref, cap = lanczos_budget(setup.name, quick)
    lam = lambda_max_study(matvec, dim, device, k_ref, cap, hvp_s / step_s)
    out["lambda_max"] = lam
    if lam.get("lanczos_hvps_to_1e-3"):
        out["lambda_max_steps"] = (graph_s + lam["lanczos_hvps_to_1e-3"] * hvp_s) / step_s
    tr = trace_study(matvec, dim, device, 10 if quick else 30, args.trace_rel_se)
    if tr["samples_needed"]:
        tr["cost_steps"] = (graph_s + tr["samples_needed"] * hvp_s) / step_s
    out["trace"] = tr
    probe = NoiseProbe(method="auto")
    ok, reason = per_example_grads_supported(net)
    probe.method_used = "per_example" if ok else "microbatch"
    noise_s = common.time_call(
        lambda: probe.measure(common.probed(net), (x, y)), device, max(3, repeats // 2)
    )
    out["per_example"] = {"noise_probe_steps": noise_s / step_s, "method": probe.method_used}
    if ok:
        pe_s = common.time_call(
            lambda: per_example_grads(net, params, (x, y), common.batch_loss),
            device,
            max(3, repeats // 2),
        )
        out["per_example"]["vmap_steps"] = pe_s / step_s
    else:
        out["per_example"]["vmap_unsupported"] = reason
    return out
