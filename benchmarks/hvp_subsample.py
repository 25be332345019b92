"""What a subsampled HVP batch (``probes.curvature.hvp_examples``) saves and what it costs in
accuracy, along real training.

    python benchmarks/hvp_subsample.py --quick                  # MLP, CNN, GPT on CPU
    python benchmarks/hvp_subsample.py --quick --models resnet18 --firings 2

For each model (``common.build_setup``), trained with its benchmark optimizer, on every
``--cadence``-th step (a "firing", before the update) the curvature of the loss on the step's
batch (B examples) is measured as the probe does (Lanczos to 1e-3, the trace to 10 % relative
standard error), and then again on ``--draws`` random subsets of k = B/2, B/4, ... examples
(``--fractions``). Per fraction:

- HVP time: one HVP on k examples / one on the whole batch (median of ``--timed`` HVPs each);
- bias: the mean over firings and draws of the signed deviation from the whole batch's value
  (λ_max relative to |λ_max|, λ_min to the spectrum's scale max(|λ_max|, |λ_min|), the trace
  relative to |trace|); λ_max of a subset is biased upward (it is convex in the Hessian);
- spread: the standard deviation between the draws of one firing (same units), averaged over
  firings: what one firing's value may move by from the draw alone.

The whole-batch values carry the estimators' own error (≤ 1e-3 for λ, the trace's standard
error, also reported). Writes ``benchmarks/results/hvp-subsample-cpu-<quick|full>.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

import common
import torch
from tables import fmt, table

DEFAULT_MODELS = ("mlp", "cnn", "gpt")
QUANTITIES = ("lambda_max", "lambda_min", "trace")


def curvature(net, x, y, generator: torch.Generator) -> tuple[dict[str, float], Any, int]:
    """The probe's estimates on the batch ``(x, y)`` at the live parameters; the matvec and
    the dimension (for timing)."""
    from optprobe.estimators.functional import (
        functional_loss,
        hvp_double_backward,
        trainable_params,
    )
    from optprobe.estimators.hutchinson import hutchpp_trace
    from optprobe.estimators.lanczos import extreme_eigenvalues

    params = {k: p.detach() for k, p in trainable_params(net).items()}
    dim = sum(p.numel() for p in params.values())
    matvec = hvp_double_backward(functional_loss(net, (x, y), common.batch_loss), params)
    eig = extreme_eigenvalues(matvec, dim, generator=generator)
    tr = hutchpp_trace(
        matvec, dim, 0.1, 20, basis=eig.basis, basis_trace=eig.basis_trace, generator=generator
    )
    values = {
        "lambda_max": eig.lambda_max,
        "lambda_min": eig.lambda_min,
        "trace": tr.trace,
        "trace_rse": tr.stderr / abs(tr.trace),
    }
    return values, matvec, dim


def hvp_seconds(matvec, dim: int, repeats: int) -> float:
    """Median seconds of one HVP (after one untimed)."""
    v = torch.randn(dim, dtype=torch.float64)
    return common.time_call(lambda: matvec(v), torch.device("cpu"), repeats)


def deviations(sub: dict[str, float], whole: dict[str, float]) -> dict[str, float]:
    """Signed deviations of a subset's estimates from the whole batch's, in the module's units."""
    scale = max(abs(whole["lambda_max"]), abs(whole["lambda_min"]))
    return {
        "lambda_max": (sub["lambda_max"] - whole["lambda_max"]) / abs(whole["lambda_max"]),
        "lambda_min": (sub["lambda_min"] - whole["lambda_min"]) / scale,
        "trace": (sub["trace"] - whole["trace"]) / abs(whole["trace"]),
    }


def fire(net, x, y, args, seed: int) -> dict[str, Any]:
    """One firing: the whole batch, then ``args.draws`` subsets per fraction."""
    gen = torch.Generator().manual_seed(seed)
    whole, matvec, dim = curvature(net, x, y, gen)
    row: dict[str, Any] = {"batch": int(x.shape[0]), "whole": whole, "fractions": {}}
    whole_s = hvp_seconds(matvec, dim, args.timed)
    for fraction in args.fractions:
        k = max(1, round(fraction * x.shape[0]))
        draws, seconds = [], None
        for _ in range(args.draws):
            pick = torch.randperm(x.shape[0], generator=gen)[:k]
            sub, sub_matvec, _ = curvature(net, x[pick], y[pick], gen)
            draws.append(deviations(sub, whole))
            if seconds is None:
                seconds = hvp_seconds(sub_matvec, dim, args.timed)
        row["fractions"][str(fraction)] = {
            "examples": k,
            "hvp_time_ratio": seconds / whole_s,
            "draws": draws,
        }
    print(json.dumps(row), flush=True)
    return row


def run_model(name: str, args) -> dict[str, Any]:
    setup = common.build_setup(name, quick=args.quick)
    record = common.run_firings(
        setup, args.cadence, args.firings, lambda step, net, x, y: fire(net, x, y, args, step)
    )
    record["summary"] = summarize(record)
    return record


def summarize(model: dict[str, Any]) -> dict[str, Any]:
    """Per fraction: HVP time ratio, and bias and spread of each quantity."""
    rows = model["firings"]
    out: dict[str, Any] = {
        "whole_trace_rse": statistics.mean(r["whole"]["trace_rse"] for r in rows)
    }
    for fraction in rows[0]["fractions"]:
        per = [r["fractions"][fraction] for r in rows]
        entry: dict[str, Any] = {
            "examples": per[0]["examples"],
            "batch": rows[0]["batch"],
            "hvp_time_ratio": statistics.median(p["hvp_time_ratio"] for p in per),
        }
        for q in QUANTITIES:
            entry[f"{q}_bias"] = statistics.mean(d[q] for p in per for d in p["draws"])
            spreads = [statistics.stdev(d[q] for d in p["draws"]) for p in per]
            entry[f"{q}_spread"] = statistics.mean(spreads)
        out[fraction] = entry
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Subsampled HVP batch (`probes.curvature.hvp_examples`): cost and accuracy",
        "",
        "Generated by the commands below; every number is the script's output.",
        "",
        f"Firings every {results['cadence']} training steps, on the step's batch, before the "
        f"update; {results['draws']} random subsets per fraction and firing. Deviations from "
        "the whole batch's estimate: λ_max relative to |λ_max|, λ_min to max(|λ_max|, "
        "|λ_min|), the trace relative to |trace|. Bias: mean signed deviation over firings and "
        "draws; spread: standard deviation between the draws of one firing, mean over firings.",
        "",
    ]
    for name, res in results["models"].items():
        lines.append(
            f"- **{name}** ({res['description']}, {res['num_params']:,} parameters): "
            f"`{res['command']}`, {res['started']}, {res['seconds']:.0f} s, "
            f"{len(res['firings'])} firings; whole-batch trace RSE "
            f"{fmt(res['summary']['whole_trace_rse'])}"
        )
    lines.append("")
    header = ["model", "examples (of batch)", "HVP time ratio"]
    for q in ("λ_max", "λ_min", "trace"):
        header += [f"{q} bias", f"{q} spread"]
    rows = []
    for name, res in results["models"].items():
        for s in res["summary"].values():
            if not isinstance(s, dict):
                continue
            row = [name, f"{s['examples']} of {s['batch']}", fmt(s["hvp_time_ratio"])]
            for q in QUANTITIES:
                row += [fmt(s[f"{q}_bias"]), fmt(s[f"{q}_spread"])]
            rows.append(row)
    lines += table(header, rows)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_firing_arguments(parser, DEFAULT_MODELS, firings=6)
    parser.add_argument("--fractions", default="0.5,0.25", help="subset sizes, of the batch")
    parser.add_argument("--draws", type=int, default=4, help="subsets per fraction and firing")
    parser.add_argument("--timed", type=int, default=5, help="HVPs timed per batch size")
    args = parser.parse_args(argv)
    args.fractions = [float(f) for f in args.fractions.split(",")]
    if args.draws < 2 or not all(0 < f < 1 for f in args.fractions):
        parser.error("--draws must be at least 2 and every fraction in (0, 1)")
    path, results = common.firing_results(args, "hvp-subsample")
    results.update(cadence=args.cadence, draws=args.draws)
    common.run_models(path, results, args, run_model, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
