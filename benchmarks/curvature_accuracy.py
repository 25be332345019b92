"""Accuracy and HVP cost of the curvature probe's estimators along real training.

    python benchmarks/curvature_accuracy.py --quick                # MLP, CNN, GPT on CPU
    python benchmarks/curvature_accuracy.py --quick --models mlp   # one model

For each model (``common.build_setup``) it trains with the model's benchmark optimizer and, on
every ``--cadence``-th step (a "firing", before the update, on the step's batch), runs on the
same Hessian (double-backward HVPs):

- a converged reference: Lanczos from a Gaussian start to ``--ref-tol`` (cap ``--ref-cap``);
  its Krylov basis deflates a reference trace to 1 % relative standard error (cap 200 HVPs);
- the default cold start: ``extreme_eigenvalues`` with the default cap and tolerance 1e-3;
- the warm start: the same, started from the previous firing's warm (or first, cold) Ritz
  vectors of lambda_max and lambda_min, as the curvature probe does;
- both with each stopping rule (``ERROR_BOUNDS``, from the same start vectors): the default
  Ritz residual bound ``r`` and the gap-refined ``min(r, r^2 / gap)`` (the reference uses
  ``r``);
- the trace: today's 10 Hutchinson samples, and ``hutchpp_trace`` to 10 % relative standard
  error deflated by the cold and by the warm Lanczos basis.

Errors: lambda_max relative to |lambda_max|, lambda_min relative to the spectrum's scale
max(|lambda_max|, |lambda_min|) (the tolerance's definition), both against the reference;
trace errors in units of the estimate's own standard error combined with the reference's.
Writes ``benchmarks/results/curvature-<device>-<quick|full>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from typing import Any

import common
import torch
from tables import fmt, table

DEFAULT_MODELS = ("mlp", "cnn", "gpt")


class Counted:
    """A matvec that counts its calls."""

    def __init__(self, matvec) -> None:
        self.matvec, self.calls = matvec, 0

    def __call__(self, v):
        self.calls += 1
        return self.matvec(v)


def _errors(est, ref) -> tuple[float, float]:
    scale = max(abs(ref.lambda_max), abs(ref.lambda_min))
    return (
        abs(est.lambda_max - ref.lambda_max) / abs(ref.lambda_max),
        abs(est.lambda_min - ref.lambda_min) / scale,
    )


def fire(matvec, dim: int, previous, args, seed: int) -> tuple[dict[str, Any], Any]:
    """One firing: reference, cold, warm and the trace estimates on one Hessian."""
    from optprobe.estimators.hutchinson import hutchinson_trace, hutchpp_trace
    from optprobe.estimators.lanczos import ERROR_BOUNDS, extreme_eigenvalues

    gen = torch.Generator().manual_seed(seed)
    ref = extreme_eigenvalues(
        matvec, dim, args.ref_cap, args.ref_tol, generator=gen, bound="residual"
    )
    runs = {}
    start = gen.get_state()
    for bound in ERROR_BOUNDS:  # paired: each stopping rule from the same start vectors
        gen.set_state(start)
        runs[label_of("cold", bound)] = extreme_eigenvalues(matvec, dim, generator=gen, bound=bound)
        if previous is not None:
            runs[label_of("warm", bound)] = extreme_eigenvalues(
                matvec, dim, generator=gen, warm_start=previous, bound=bound
            )
    tr_ref = hutchpp_trace(
        matvec, dim, 0.01, 200, basis=ref.basis, basis_trace=ref.basis_trace, generator=gen
    )
    row: dict[str, Any] = {
        "ref": {
            "lambda_max": ref.lambda_max,
            "lambda_min": ref.lambda_min,
            "hvps": ref.num_matvecs,
            "converged": ref.converged,
            "trace": tr_ref.trace,
            "trace_stderr": tr_ref.stderr,
        },
    }
    for label, est in runs.items():
        err_max, err_min = _errors(est, ref)
        tr = hutchpp_trace(
            matvec,
            dim,
            0.1,
            args.trace_cap,
            basis=est.basis,
            basis_trace=est.basis_trace,
            generator=gen,
        )
        row[label] = {
            "hvps": est.num_matvecs,
            "converged": est.converged,
            "hvps_max": est.matvecs_to_max,
            "err_max": err_max,
            "err_min": err_min,
            "trace_hvps": tr.num_matvecs,
            "trace_rse": tr.stderr / abs(tr.trace),
            "trace_err_se": abs(tr.trace - tr_ref.trace) / math.hypot(tr.stderr, tr_ref.stderr),
        }
    h_trace, h_se, _ = hutchinson_trace(matvec, dim, 10, generator=gen)
    row["hutchinson10"] = {
        "rse": h_se / abs(h_trace),
        "err_rel": abs(h_trace - tr_ref.trace) / abs(tr_ref.trace),
    }
    print(json.dumps(row), flush=True)
    default = runs.get(label_of("warm", ERROR_BOUNDS[0]), runs[label_of("cold", ERROR_BOUNDS[0])])
    return row, default.ritz_vectors


def label_of(start: str, bound: str) -> str:
    """Row label of a Lanczos run: its start (cold, warm) and stopping rule."""
    return f"{start} {bound}"


def labels() -> list[str]:
    from optprobe.estimators.lanczos import ERROR_BOUNDS

    return [label_of(start, b) for b in ERROR_BOUNDS for start in ("cold", "warm")]


def run_model(name: str, args) -> dict[str, Any]:
    """Train ``name`` and fire every ``args.cadence`` steps; the per-firing rows."""
    from optprobe.estimators.functional import (
        functional_loss,
        hvp_double_backward,
        trainable_params,
    )

    setup = common.build_setup(name, quick=args.quick)
    fixed = setup.batch(torch.device("cpu"))  # the probe batch of --batch fixed
    previous = None

    def firing(step: int, net, x, y) -> dict[str, Any]:
        nonlocal previous
        batch = fixed if args.batch == "fixed" else (x, y)
        params = {k: p.detach() for k, p in trainable_params(net).items()}
        dim = sum(p.numel() for p in params.values())
        matvec = hvp_double_backward(functional_loss(net, batch, common.batch_loss), params)
        row, previous = fire(matvec, dim, previous, args, seed=step)
        return row

    record = common.run_firings(setup, args.cadence, args.firings, firing)
    record["summary"] = summarize(record)
    record["settings"] = {
        "firings": args.firings,
        "ref_tol": args.ref_tol,
        "ref_cap": args.ref_cap,
        "ref_trace_cap": args.ref_trace_cap,
    }
    return record


def summarize(model: dict[str, Any]) -> dict[str, Any]:
    """Per model: converged fraction, HVPs and worst error, cold vs warm; trace costs."""
    out: dict[str, Any] = {}
    rows = model["firings"]
    for label in labels():
        got = [r[label] for r in rows if label in r]
        if not got:
            continue
        out[label] = {
            "firings": len(got),
            "converged": sum(g["converged"] for g in got) / len(got),
            "hvps": statistics.mean(g["hvps"] for g in got),
            "hvps_max": statistics.mean(g["hvps_max"] or math.nan for g in got),
            "max_err_max": max(g["err_max"] for g in got),
            "max_err_min": max(g["err_min"] for g in got),
            "trace_hvps": statistics.mean(g["trace_hvps"] for g in got),
            "trace_rse": statistics.mean(g["trace_rse"] for g in got),
            "max_trace_err_se": max(g["trace_err_se"] for g in got),
        }
    out["hutchinson10_rse"] = statistics.mean(r["hutchinson10"]["rse"] for r in rows)
    out["hutchinson10_max_err"] = max(r["hutchinson10"]["err_rel"] for r in rows)
    out["ref_converged"] = all(r["ref"]["converged"] for r in rows)
    return out


def markdown(results: dict[str, Any]) -> str:
    batch = results.get("batch", "the step's batch")
    lines = [
        "# Curvature estimators: convergence, HVPs per firing, error vs a converged reference",
        "",
        "Generated by the commands below; every number is the script's output.",
        "",
        f"Firings every {results['cadence']} training steps, on {batch}, before the "
        f"update; defaults: Lanczos cap {results['lanczos_cap']}, tol 1e-3; trace to 10 % "
        f"relative standard error, cap {results['trace_cap']} HVPs. Per model: the command, "
        "its start, its duration, and the reference (Lanczos tolerance and cap; HVP cap of "
        "the reference trace, deflated by the reference basis, to 1 % RSE):",
        "",
    ]
    for name, res in results["models"].items():
        st = res["settings"]
        lines.append(
            f"- **{name}** ({res['description']}, {res['num_params']:,} parameters): "
            f"`{res['command']}`, {res['started']}, {res['seconds']:.0f} s; reference "
            f"{st['ref_tol']:g}, {st['ref_cap']}, {st['ref_trace_cap']}"
        )
    lines.append("")
    header = [
        "model",
        "start, error bound",
        "firings",
        "converged",
        "HVPs/firing",
        "HVPs to λ_max",
        "max err λ_max",
        "max err λ_min (/scale)",
        "trace HVPs",
        "trace RSE",
        "max trace err (SE)",
    ]
    rows = []
    for name, res in results["models"].items():
        s = res["summary"]
        for label in labels():
            if label in s:
                c = s[label]
                rows.append(
                    [
                        name,
                        label,
                        fmt(c["firings"]),
                        fmt(c["converged"]),
                        fmt(c["hvps"]),
                        fmt(c["hvps_max"]),
                        fmt(c["max_err_max"]),
                        fmt(c["max_err_min"]),
                        fmt(c["trace_hvps"]),
                        fmt(c["trace_rse"]),
                        fmt(c["max_trace_err_se"]),
                    ]
                )
    lines += table(header, rows)
    lines += ["", "Today's 10 Hutchinson samples on the same Hessians:", ""]
    lines += table(
        ["model", "mean RSE", "max error vs reference", "reference converged"],
        (
            [
                n,
                fmt(r["summary"]["hutchinson10_rse"]),
                fmt(r["summary"]["hutchinson10_max_err"]),
                fmt(r["summary"]["ref_converged"]),
            ]
            for n, r in results["models"].items()
        ),
    )
    lines += ["", "Warm firings exclude the first firing (it has no previous Ritz vectors)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from optprobe.estimators.lanczos import DEFAULT_MAX_ITERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_firing_arguments(parser, DEFAULT_MODELS, firings=8)
    parser.add_argument("--ref-tol", type=float, default=1e-6)
    parser.add_argument("--ref-cap", type=int, default=300)
    parser.add_argument("--trace-cap", type=int, default=20, help="HVPs for the trace")
    parser.add_argument("--ref-trace-cap", type=int, default=200, help="reference trace HVPs")
    parser.add_argument(
        "--batch", default="current", choices=("current", "fixed"), help="probe batch"
    )
    args = parser.parse_args(argv)
    suffix = "" if args.batch == "current" else "-fixed-batch"
    path, results = common.firing_results(args, "curvature", suffix)
    batch = "the step's batch" if args.batch == "current" else "one fixed batch"
    results.update(
        batch=batch, cadence=args.cadence, lanczos_cap=DEFAULT_MAX_ITERS, trace_cap=args.trace_cap
    )
    common.run_models(path, results, args, run_model, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
