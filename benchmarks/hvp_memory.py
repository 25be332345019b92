"""What one curvature firing holds in memory, item by item (MiB), next to a plain training step.

    python benchmarks/hvp_memory.py --models mlp
    python benchmarks/hvp_memory.py --models resnet18 --lanczos-cap 40

For each model (``common.build_setup(name, quick=True)``) it takes one training step (so the
optimizer state exists) and then measures, each block's peak and what it leaves held, relative
to the memory in use just before the block:

- ``plain_step``: forward + backward of a training step (gradients set to None before);
- ``graph``: the curvature probe's gradient graph (``hvp_double_backward``: one forward and a
  backward with ``create_graph``), with the step's gradients still held as in a real firing;
- ``hvp``: one Hessian-vector product through that graph (its result is the held part);
- ``firing``: one whole ``CurvatureProbe.measure`` with default settings (Lanczos cap
  ``--lanczos-cap``, trace cap 20) on a fresh graph; after it only the Ritz vectors should stay.

Next to them the analytic sizes: parameters, one float64 vector, and the Lanczos basis (rows x
dim x bytes, float32 above 1M parameters) at the cap and at the peak of its growth, when the
old rows and the grown copy both exist (CUDA grows it once from 16 rows to the cap; the CPU allocates the cap
at once and its pages count only once written). CPU: peak RSS (VmHWM, reset per block through
/proc/self/clear_refs; the script re-runs itself with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed
tensors go back to the system); CUDA: ``torch.cuda.max_memory_allocated``. Writes
``benchmarks/results/hvp-memory-<device>.json`` and ``.md`` (a run of some models replaces
their rows and keeps the others).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import common
import torch
from tables import fmt, table

from optprobe.estimators import lanczos

RESULTS_DIR = common.ROOT / "benchmarks" / "results"
MIB = 2**20
CUDA = torch.device("cuda")  # only its type is read: CUDA's basis allocation policy


def growth_peak_rows(capacity: int, device: torch.device) -> int:
    """Most basis rows allocated at once while the basis grows to ``capacity``: a copying
    growth holds the old rows and the grown tensor together."""
    rows = lanczos.basis_rows(capacity, device)
    return max([rows[0]] + [a + b for a, b in zip(rows, rows[1:])])


def analytic(
    dim: int, params_bytes: int, cap: int, default_cap: int, device: torch.device
) -> dict[str, Any]:
    """Sizes (MiB) that follow from the parameter count alone, for the basis on ``device`` and
    on CUDA (which grows it once, from its first chunk to the cap)."""
    dtype = lanczos._default_basis_dtype(dim)
    row_bytes = dim * dtype.itemsize
    out = {
        "params_mib": params_bytes / MIB,
        "float64_vector_mib": dim * 8 / MIB,
        "basis_dtype": str(dtype).replace("torch.", ""),
        "basis_row_mib": row_bytes / MIB,
        "basis_cap_rows": cap,
        "basis_at_cap_mib": cap * row_bytes / MIB,
        "basis_default_cap_rows": default_cap,
        "basis_at_default_cap_mib": default_cap * row_bytes / MIB,
        "ritz_vectors_mib": 2 * dim * 4 / MIB,
    }
    for where, dev in (("device", device), ("cuda", CUDA)):
        for label, rows in (("cap", cap), ("default_cap", default_cap)):
            peak = growth_peak_rows(rows, dev)
            out[f"{where}_growth_rows_at_{label}"] = list(lanczos.basis_rows(rows, dev))
            out[f"{where}_growth_peak_rows_at_{label}"] = peak
            out[f"{where}_growth_peak_at_{label}_mib"] = peak * row_bytes / MIB
    return out


def block(memory: common.PeakMemory, fn) -> tuple[Any, dict[str, float]]:
    """Run ``fn()``; its result and ``peak_mib`` (extra peak), ``held_mib`` (extra memory in
    use after it), ``absolute_peak_mib`` and ``seconds``, relative to just before it."""
    gc.collect()
    before = memory.current_mib()
    memory.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = memory.peak_mib()
    gc.collect()
    held = memory.current_mib() - before
    stats = {"peak_mib": peak - before, "held_mib": held, "absolute_peak_mib": peak}
    return out, {**stats, "before_mib": before, "seconds": seconds}


class BasisSpy:
    """Wraps ``extreme_eigenvalues`` as the curvature probe calls it, recording each run's
    steps and the rows its basis storage holds (observation only: the result is unchanged)."""

    def __init__(self, fn) -> None:
        self.fn, self.runs = fn, []

    def __call__(self, matvec, dim, *args, **kwargs):
        eig = self.fn(matvec, dim, *args, **kwargs)
        rows = eig.basis.untyped_storage().nbytes() // (dim * eig.basis.element_size())
        self.runs.append({"steps": eig.num_matvecs, "allocated_rows": int(rows)})
        return eig


def graph_and_hvp(net, x, y, memory: common.PeakMemory) -> tuple[dict, dict]:
    """The blocks of the gradient graph (``hvp_double_backward``, as the probe builds it) and
    of one HVP through it; both are freed on return."""
    from optprobe.estimators.functional import (
        functional_loss,
        hvp_double_backward,
        trainable_params,
    )

    params = {k: p.detach() for k, p in trainable_params(net).items()}
    dim = sum(p.numel() for p in params.values())

    def graph():
        return hvp_double_backward(functional_loss(net, (x, y), common.batch_loss), params)

    matvec, graph_stats = block(memory, graph)
    v = torch.randn(dim, dtype=torch.float64, device=x.device)
    _, hvp_stats = block(memory, lambda: matvec(v))
    return graph_stats, hvp_stats


def basis_check(dim: int, cap: int, device: torch.device, memory: common.PeakMemory) -> dict:
    """One Lanczos run alone, to the cap, on the diagonal operator ``v -> d * v`` of the
    model's dimension (``d`` evenly spaced in [1, 2], so tol 1e-14 is not reached): its peak and
    held memory (MiB) with the basis allocated as this device does and grown from
    ``BASIS_CHUNK`` rows as CUDA does."""
    diag = torch.linspace(1.0, 2.0, dim, dtype=torch.float64, device=device)
    real = lanczos.basis_rows
    policies = {"this_device": real, "chunk_then_cap": lambda c, d: real(c, CUDA)}

    def run_to_cap():
        gen = torch.Generator().manual_seed(0)
        return lanczos.extreme_eigenvalues(
            lambda v: diag * v, dim, cap, 1e-14, generator=gen, device=device
        )

    out = {}
    for label, rows in policies.items():
        lanczos.basis_rows = rows
        try:
            eig, stats = block(memory, run_to_cap)
        finally:
            lanczos.basis_rows = real
        row_bytes = dim * eig.basis.element_size()
        stats["steps"] = eig.num_matvecs
        stats["allocated_rows"] = eig.basis.untyped_storage().nbytes() // row_bytes
        stats["basis_written_mib"] = eig.num_matvecs * row_bytes / MIB
        out[label] = stats
        del eig
    return out


def run_model(name: str, args, device: torch.device) -> dict[str, Any]:
    from optprobe.estimators.functional import trainable_params
    from optprobe.estimators.lanczos import DEFAULT_MAX_ITERS
    from optprobe.probes import curvature

    setup = common.build_setup(name, quick=True)
    net = setup.fresh_net(device).train()
    opt = setup.optimizer(net.parameters())
    x, y = setup.batch(device)
    params = trainable_params(net)
    dim = sum(p.numel() for p in params.values())
    params_bytes = sum(p.numel() * p.element_size() for p in params.values())
    memory = common.PeakMemory(device)
    common.loss_fn(net(x), y).backward()  # one step: the optimizer state exists from here on
    opt.step()
    opt.zero_grad(set_to_none=True)
    measured: dict[str, Any] = {"resting_mib": memory.current_mib()}

    def plain_step():
        common.loss_fn(net(x), y).backward()

    _, measured["plain_step"] = block(memory, plain_step)  # leaves the gradients, as a firing sees

    measured["graph"], measured["hvp"] = graph_and_hvp(net, x, y, memory)

    probe = curvature.CurvatureProbe(lanczos_iters=args.lanczos_cap, hvp="double_backward")
    spy = BasisSpy(curvature.extreme_eigenvalues)
    curvature.extreme_eigenvalues = spy
    try:
        (values, _), measured["firing"] = block(
            memory, lambda: probe.measure(common.probed(net), (x, y), opt)
        )
    finally:
        curvature.extreme_eigenvalues = spy.fn
    measured["firing"].update(
        lanczos_steps=spy.runs[0]["steps"],
        basis_allocated_rows=spy.runs[0]["allocated_rows"],
        lanczos_converged=bool(values["curv/lanczos_converged"]),
        trace_matvecs=int(values["curv/trace_matvecs"]),
        lambda_max=values["curv/lambda_max"],
    )
    if args.basis_check:
        measured["basis_check"] = basis_check(dim, args.lanczos_cap, device, memory)
    plain = measured["plain_step"]
    measured["firing_over_plain_peak"] = (  # None where the step's extra peak rounds to 0
        measured["firing"]["peak_mib"] / plain["peak_mib"] if plain["peak_mib"] > 0 else None
    )
    measured["firing_over_plain_absolute"] = (
        measured["firing"]["absolute_peak_mib"] / plain["absolute_peak_mib"]
    )
    return {
        "description": setup.description,
        "data_source": setup.data_source,
        "num_params": dim,
        "batch_size": setup.batch_size,
        "lanczos_cap": args.lanczos_cap,
        "capped_below_default": args.lanczos_cap < DEFAULT_MAX_ITERS,
        "analytic": analytic(dim, params_bytes, args.lanczos_cap, DEFAULT_MAX_ITERS, device),
        "measured": measured,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Memory of one curvature firing, item by item (MiB)",
        "",
        "Generated by the commands below; every number is the script's output. Method: "
        f"{results['method']}. Measured numbers are extra memory relative to just before each "
        "block (peak: the block's peak; held: still in use after it); on the CPU they are "
        "resident pages of the whole process, so a tensor allocated but never written "
        "counts only where it was touched.",
        "",
    ]
    for name, res in results["models"].items():
        note = (
            f" (Lanczos capped at {res['lanczos_cap']}, below the default "
            f"{res['analytic']['basis_default_cap_rows']}, to keep the run short)"
            if res["capped_below_default"]
            else ""
        )
        lines.append(
            f"- **{name}** ({res['description']}, {res['num_params']:,} parameters, "
            f"{res['data_source']}): `{res['command']}`, {res['started']}, "
            f"{res['seconds']:.0f} s{note}; machine: {res['machine']['cpu']}, "
            f"{res['machine']['cpu_cores']} cores, torch {res['machine']['torch']} "
            f"({res['machine']['torch_threads']} threads), {res['machine']['device_name']}"
        )
    lines += [
        f"  - {name}: {res['note']}" for name, res in results["models"].items() if res.get("note")
    ]
    lines += ["", "## Measured", ""]
    header = ["model", "block", "extra peak", "held after", "absolute peak", "seconds"]
    rows = []
    labels = (
        ("plain_step", "plain step (forward + backward)"),
        ("graph", "gradient graph (create_graph)"),
        ("hvp", "one HVP"),
        ("firing", "whole firing (measure)"),
    )
    for name, res in results["models"].items():
        m = res["measured"]
        for key, label in labels:
            b = m[key]
            cells = (b["peak_mib"], b["held_mib"], b["absolute_peak_mib"], b["seconds"])
            rows.append([name, label, *(fmt(float(c)) for c in cells)])
    lines += table(header, rows)
    lines += ["", "Firing details:", ""]
    lines += table(
        [
            "model",
            "Lanczos steps",
            "converged",
            "basis rows allocated",
            "trace HVPs",
            "λ_max",
            "firing / plain (extra peak)",
            "firing / plain (absolute)",
        ],
        (
            [
                name,
                fmt(r["measured"]["firing"]["lanczos_steps"]),
                fmt(r["measured"]["firing"]["lanczos_converged"]),
                fmt(r["measured"]["firing"]["basis_allocated_rows"]),
                fmt(r["measured"]["firing"]["trace_matvecs"]),
                fmt(r["measured"]["firing"]["lambda_max"]),
                fmt(r["measured"]["firing_over_plain_peak"]),
                fmt(r["measured"]["firing_over_plain_absolute"]),
            ]
            for name, r in results["models"].items()
        ),
    )
    checked = {n: r for n, r in results["models"].items() if "basis_check" in r["measured"]}
    if checked:
        lines += [
            "",
            "Lanczos alone, to the run's cap, on a diagonal operator of the model's dimension "
            "(tol 1e-14, not reached), with the basis allocated as on this device and grown "
            "from 16 rows to the cap (CUDA's way):",
            "",
        ]
        rows = []
        for name, res in checked.items():
            for label, b in res["measured"]["basis_check"].items():
                cells = [b["steps"], b["allocated_rows"], b["basis_written_mib"]]
                cells += [b["peak_mib"], b["held_mib"], b["seconds"]]
                rows.append([name, label, *(fmt(c) for c in cells)])
        lines += table(
            [
                "model",
                "basis allocation",
                "steps",
                "rows allocated",
                "rows written (MiB)",
                "extra peak",
                "held after",
                "seconds",
            ],
            rows,
        )
    lines += ["", "## Analytic sizes", ""]
    dev = results["device"]
    analytic_rows = (
        ("parameters", "params_mib"),
        ("one float64 vector (dim x 8 B)", "float64_vector_mib"),
        ("basis dtype", "basis_dtype"),
        ("basis row (dim x bytes)", "basis_row_mib"),
        ("basis rows at the run's cap", "basis_cap_rows"),
        ("basis at the run's cap (rows x dim x bytes)", "basis_at_cap_mib"),
        ("basis at the default cap (80 rows)", "basis_at_default_cap_mib"),
        (f"{dev}: rows allocated while growing to the run's cap", "device_growth_rows_at_cap"),
        (
            f"{dev}: most rows allocated at once (old + grown copy)",
            "device_growth_peak_rows_at_cap",
        ),
        (f"{dev}: basis at that peak", "device_growth_peak_at_cap_mib"),
        (
            f"{dev}: most rows allocated at once, default cap",
            "device_growth_peak_rows_at_default_cap",
        ),
        (f"{dev}: basis at that peak, default cap", "device_growth_peak_at_default_cap_mib"),
        (
            "cuda: rows allocated while growing to the default cap",
            "cuda_growth_rows_at_default_cap",
        ),
        ("cuda: most rows allocated at once, default cap", "cuda_growth_peak_rows_at_default_cap"),
        ("cuda: basis at that peak, default cap", "cuda_growth_peak_at_default_cap_mib"),
        ("Ritz vectors kept between firings (2 x dim x 4 B)", "ritz_vectors_mib"),
    )
    models = list(results["models"])
    lines += table(
        ["item", *models],
        (
            [label] + [_cell(results["models"][m]["analytic"][key]) for m in models]
            for label, key in analytic_rows
        ),
    )
    if results.get("notes"):
        lines += ["", *results["notes"]]
    return "\n".join(lines) + "\n"


def _cell(x: Any) -> str:
    if isinstance(x, list):
        return " → ".join(str(v) for v in x)
    return fmt(float(x)) if isinstance(x, float) else fmt(x)


def main(argv: list[str] | None = None) -> int:
    from optprobe.estimators.lanczos import DEFAULT_MAX_ITERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp", help="comma-separated, from common.MODELS")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--lanczos-cap", type=int, default=DEFAULT_MAX_ITERS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument(
        "--no-basis-check",
        dest="basis_check",
        action="store_false",
        help="skip the Lanczos-alone runs on a diagonal operator (two runs to the cap)",
    )
    parser.add_argument("--note", default="", help="a remark kept with the models of this run")
    args = parser.parse_args(argv)
    device = common.resolve_device(args.device)
    if device.type == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ and argv is None:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors go to the OS
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"hvp-memory-{device.type}.json"
    results = json.loads(path.read_text()) if path.exists() else {"models": {}}
    results["method"] = common.PeakMemory(device).method
    results["device"] = device.type
    results["notes"] = [
        "The firing runs with the step's gradients held (as before the optimizer step in "
        "training); 'firing / plain' divides the firing's numbers by the plain step's.",
    ]
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    for name in args.models.split(","):
        if name not in common.MODELS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(common.MODELS)}")
        started = time.gmtime()
        start = time.perf_counter()
        res = run_model(name, args, device)
        res["seconds"] = time.perf_counter() - start
        res["command"] = f"python benchmarks/hvp_memory.py {argv_text}".strip()
        res["started"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", started)
        res["machine"] = common.machine_info(device)
        res["note"] = args.note
        res["env"] = {"MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_")}
        results["models"][name] = res
        path.write_text(json.dumps(results, indent=1))
        path.with_suffix(".md").write_text(markdown(results))
        print(json.dumps({name: res["measured"]}, indent=1), flush=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
