"""Overhead and accuracy benchmark of optprobe's probes against plain training and peer tools.

    python benchmarks/overhead.py --quick                 # CPU or GPU, a few minutes per model
    python benchmarks/overhead.py                          # the full benchmark
    python benchmarks/overhead.py --quick --models mlp     # one model
    python benchmarks/overhead.py --quick --device cuda --amp bf16

For each model (one worker process per model, so memory peaks and allocator state do not mix)
it measures, with real Lightning training:

1. Overhead: plain and probed training interleaved (A B A B ...), each block a fresh copy of
   the same network trained from the same initialization on the same batches for a whole
   number of probe periods after a few untimed warm-up steps. Per block: the mean seconds per
   optimizer step over the timed window (probe steps included, so the cost is amortized over
   the cadence) and the peak memory. Ratio of a probed block = its per-step time / the mean of
   the plain blocks right before and after it; the reported ratio is the median over
   repetitions.
2. Cost per estimate in units of one training step (``costs.py``).
3. Peers on models they support (``peers.py``): Cockpit's economy and full configurations in
   the same Lightning loop, PyHessian and curvlinops for lambda_max and the trace, BackPACK for
   per-example gradient variance. Peers are imported lazily; a missing or failing one is
   recorded with its error.

Writes ``benchmarks/results/<device>-<quick|full>.json`` and ``.md`` (machine, command, tables,
targets); every number in them comes from this run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

RESULTS_DIR = HERE / "results"
WARMUP_STEPS = 3


# ------------------------------------------------------------------------------- plan


def configurations(model: str) -> list[dict[str, Any]]:
    """The probe configurations measured on ``model`` (name, kind, cadence)."""
    if model == "cnn":  # the peers' model: our bundle next to Cockpit's configurations
        return [
            {"name": f"{kind}@{c}", "kind": kind, "cadence": c}
            for c in (16, 64)
            for kind in ("bundle", "cockpit-economy", "cockpit-full")
        ]
    plan = [
        ("step", (1, 16, 64)),
        ("step_fresh", (1, 16)),
        ("curvature", (16, 64)),
        ("noise", (1, 16)),
        ("bundle", (16, 64)),
    ]
    return [
        {"name": f"{kind}@{c}", "kind": kind, "cadence": c} for kind, cads in plan for c in cads
    ]


def block_steps(cadence: int, quick: bool) -> int:
    """Timed steps of a block: whole probe periods (quick: one period, at least 8 steps)."""
    if quick:
        return max(cadence, 8)
    return max(2 * cadence, 32)


def repetitions(model: str, quick: bool, override: int | None) -> int:
    if override:
        return override
    if quick:
        return 1 if model == "resnet18" else 3
    return 3


def make_callbacks(kind: str, cadence: int, start: int) -> list[Any]:
    """The probe callbacks of a configuration (cockpit kinds have none: the module does it)."""
    from optprobe.probes.curvature import CurvatureProbe
    from optprobe.probes.noise import NoiseProbe
    from optprobe.probes.step import StepProbe

    def step():
        return StepProbe(every_n_steps=cadence, start_step=start)

    def step_fresh():  # the convexity keys only: one extra forward per probed update
        return StepProbe(
            every_n_steps=cadence, start_step=start, scheme="fresh_batch", old_point_keys=False
        )

    def curvature():
        return CurvatureProbe(every_n_steps=cadence, start_step=start)  # default settings

    def noise():
        return NoiseProbe(every_n_steps=cadence, start_step=start)

    table = {
        "plain": [],
        "step": [step],
        "step_fresh": [step_fresh],
        "curvature": [curvature],
        "noise": [noise],
        "bundle": [step, curvature, noise],
    }
    if kind.startswith("cockpit"):
        return []
    return [make() for make in table[kind]]


# ------------------------------------------------------------------------------- Lightning


def quiet_lightning() -> None:
    import pytorch_lightning  # noqa: F401  (sets its loggers' levels on import: override after)

    for name in (
        "pytorch_lightning",
        "pytorch_lightning.utilities.rank_zero",
        "lightning_fabric",
        "lightning_fabric.utilities.seed",
        "lightning",
        "lightning.pytorch",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def step_timer_class():
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Wall-clock time at the end of every optimizer step (device work finished)."""

        def __init__(self, device) -> None:
            self.device = device
            self.ends: list[float] = []
            self.start: float | None = None

        def on_train_start(self, trainer, pl_module) -> None:
            self.start = common.now(self.device)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.ends.append(common.now(self.device))

    return StepTimer


def make_module(setup: common.Setup, kind: str, cadence: int, start: int, device):
    from optprobe.models.lit_module import TrainingModule

    net = setup.fresh_net(device)
    if kind.startswith("cockpit"):
        import peers

        return peers.cockpit_module(setup, net, kind.split("-", 1)[1], cadence, start)
    return TrainingModule(
        net=net, optimizer=setup.optimizer, num_classes=setup.num_classes, task=setup.task
    )


def run_block(setup, kind: str, cadence: int, steps: int, args, device, memory) -> dict[str, Any]:
    """Train a fresh copy for WARMUP_STEPS + ``steps`` steps; time the last ``steps``."""
    import pytorch_lightning as pl

    from optprobe.run.run_store import MemoryLogger

    callbacks = make_callbacks(kind, cadence, WARMUP_STEPS)
    module = make_module(setup, kind, cadence, WARMUP_STEPS, device)
    timer = step_timer_class()(device)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=WARMUP_STEPS + steps,
        max_epochs=-1,
        logger=MemoryLogger(),
        log_every_n_steps=1,
        callbacks=[*callbacks, timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        precision="bf16-mixed" if args.amp == "bf16" else "32-true",
        deterministic=False,
        default_root_dir=tempfile.gettempdir(),
    )
    memory.start()
    trainer.fit(module, datamodule=setup.datamodule)
    peak = memory.peak_mib()
    ends = timer.ends
    if len(ends) != WARMUP_STEPS + steps:
        raise RuntimeError(
            f"{kind}@{cadence}: expected {WARMUP_STEPS + steps} steps, got {len(ends)}"
        )
    seconds = ends[-1] - ends[WARMUP_STEPS - 1]
    probe_seconds = sum(getattr(c, "probe_seconds", 0.0) for c in callbacks)
    out = {
        "step_s": seconds / steps,
        "peak_mib": peak,
        "probe_share": probe_seconds / seconds,  # probe time inside the callbacks' timers
    }
    curv = [c for c in callbacks if type(c).__name__ == "CurvatureProbe"]
    noise = [c for c in callbacks if type(c).__name__ == "NoiseProbe"]
    if curv:
        out["curvature_probed"] = curv[0].num_probed
        firings = [r for r in trainer.logger.rows.values() if "curv/lanczos_matvecs" in r]
        if firings:
            hvps = [r["curv/lanczos_matvecs"] + r.get("curv/trace_matvecs", 0.0) for r in firings]
            out["curvature_hvps_per_firing"] = sum(hvps) / len(hvps)
            out["curvature_converged"] = [r.get("curv/lanczos_converged") for r in firings]
    if noise:
        out["noise_method"] = noise[0].method_used
    del trainer, module
    return out


def measure_overhead(setup, args, device) -> dict[str, Any]:
    """Interleave plain and probed blocks (P c1 P c2 ... P) for every repetition."""
    memory = common.PeakMemory(device)
    plan = configurations(setup.name)
    if args.configs:
        plan = [c for c in plan if c["name"] in args.configs]
    reps = repetitions(setup.name, args.quick, args.reps)
    rows: dict[str, dict[str, Any]] = {c["name"]: {**c, "blocks": [], "errors": []} for c in plan}
    plain_cache: dict[int, list[dict[str, Any]]] = {}
    for rep in range(reps):
        previous_plain = None
        for cfg in plan:
            steps = block_steps(cfg["cadence"], args.quick)
            before = previous_plain
            if before is None or before["steps"] != steps:
                before = {
                    **run_block(setup, "plain", 1, steps, args, device, memory),
                    "steps": steps,
                }
                plain_cache.setdefault(steps, []).append(before)
            try:
                probed = run_block(setup, cfg["kind"], cfg["cadence"], steps, args, device, memory)
            except Exception as err:  # a peer failing inside training: record it, go on
                rows[cfg["name"]]["errors"].append(common.error_text(err))
                previous_plain = before
                continue
            after = {**run_block(setup, "plain", 1, steps, args, device, memory), "steps": steps}
            plain_cache.setdefault(steps, []).append(after)
            plain_s = (before["step_s"] + after["step_s"]) / 2
            plain_mib = (before["peak_mib"] + after["peak_mib"]) / 2
            rows[cfg["name"]]["blocks"].append(
                {
                    **probed,
                    "plain_step_s": plain_s,
                    "plain_peak_mib": plain_mib,
                    "time_ratio": probed["step_s"] / plain_s,
                    "mem_ratio": probed["peak_mib"] / plain_mib,
                    "plain_spread": abs(before["step_s"] - after["step_s"]) / plain_s,
                }
            )
            previous_plain = after
            print(
                f"  [{setup.name}] rep {rep + 1}/{reps} {cfg['name']:<22} "
                f"{probed['step_s'] * 1e3:9.2f} ms/step vs plain {plain_s * 1e3:9.2f} "
                f"-> x{probed['step_s'] / plain_s:.3f}",
                flush=True,
            )
    configs = {}
    for name, row in rows.items():
        blocks = row["blocks"]
        entry = {
            "kind": row["kind"],
            "cadence": row["cadence"],
            "block_steps": block_steps(row["cadence"], args.quick),
            "repetitions": len(blocks),
        }
        if blocks:
            entry.update(
                time_ratio=common.median([b["time_ratio"] for b in blocks]),
                time_ratios=[round(b["time_ratio"], 4) for b in blocks],
                mem_ratio=common.median([b["mem_ratio"] for b in blocks]),
                step_ms=common.median([b["step_s"] for b in blocks]) * 1e3,
                plain_step_ms=common.median([b["plain_step_s"] for b in blocks]) * 1e3,
                peak_mib=common.median([b["peak_mib"] for b in blocks]),
                plain_peak_mib=common.median([b["plain_peak_mib"] for b in blocks]),
                probe_share=common.median([b["probe_share"] for b in blocks]),
                plain_spread=common.median([b["plain_spread"] for b in blocks]),
            )
            for key in ("noise_method", "curvature_probed", "curvature_hvps_per_firing"):
                if key in blocks[0]:
                    entry[key] = blocks[0][key]
            # Lanczos converged (1) or capped (0), every firing of every repetition
            converged = [c for b in blocks for c in b.get("curvature_converged", [])]
            if converged:
                entry["curvature_converged"] = converged
        if row["errors"]:
            entry["error"] = row["errors"][0]
        configs[name] = entry
    plain_all = [b["step_s"] for blocks in plain_cache.values() for b in blocks]
    return {
        "configs": configs,
        "plain_step_ms": common.median(plain_all) * 1e3,
        "warmup_steps": WARMUP_STEPS,
        "memory_method": memory.method,
    }


# ------------------------------------------------------------------------------- worker


def worker(args) -> dict[str, Any]:
    import torch

    quiet_lightning()
    device = common.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = {"resnet18": args.resnet_batch, "cnn": args.cnn_batch}.get(args.worker)
    setup = common.build_setup(args.worker, args.quick, args.cifar_dir, batch_size=batch)
    result: dict[str, Any] = {}
    if setup.name == "cnn" and args.amp != "none":
        # BackPACK, under Cockpit, fails inside autocast ("expected scalar type Float but found
        # BFloat16" in its Linear derivative): the peers' CNN runs every configuration in fp32
        args.amp = "none"
        result["precision_note"] = (
            "fp32 for every configuration on this model: BackPACK (under Cockpit) fails "
            "under bf16 autocast"
        )
    result.update(
        {
            "description": setup.description,
            "data": setup.data_source,
            "num_params": setup.num_params,
            "batch_size": setup.batch_size,
            "optimizer": setup.optimizer_desc,
            "precision": "bf16 autocast" if args.amp == "bf16" else "fp32",
        }
    )
    start = time.perf_counter()
    if "overhead" in args.parts:
        print(f"[{setup.name}] overhead", flush=True)
        result["overhead"] = measure_overhead(setup, args, device)
    if "costs" in args.parts:
        import costs

        print(f"[{setup.name}] cost per estimate", flush=True)
        result["costs"] = costs.measure_costs(setup, args, device)
    if "peers" in args.parts:
        import peers

        print(f"[{setup.name}] peers", flush=True)
        result["peers"] = peers.measure_peers(setup, args, device, result.get("costs"))
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short blocks, small ResNet batch")
    parser.add_argument("--models", default=",".join(common.MODELS), help="comma-separated")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--amp", default="auto", choices=("auto", "none", "bf16"))
    parser.add_argument(
        "--parts", default="overhead,costs,peers", help="comma-separated: overhead,costs,peers"
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default by mode)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--trace-rel-se", type=float, default=0.05, help="relative SE target")
    parser.add_argument("--resnet-batch", type=int, default=None, help="default 128 (quick 8)")
    parser.add_argument("--cnn-batch", type=int, default=None, help="default 128 (quick 32)")
    parser.add_argument("--cifar-dir", default=None, help="CIFAR-10 python batches for ResNet")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--tag", default=None, help="file name stem (default <device>-<mode>)")
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated subset of the overhead configurations, e.g. step@1,bundle@64",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other models of an existing <tag>.json (each model records its command)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    args.configs = [c for c in (args.configs or "").split(",") if c] or None
    args.models = [m for m in args.models.split(",") if m]
    for m in args.models:
        if m not in common.MODELS:
            parser.error(f"unknown model {m!r}; choose from {', '.join(common.MODELS)}")
    return args


def run_worker_process(model: str, args, argv: list[str]) -> dict[str, Any]:
    """One model in its own process; returns its result (or the error it died with)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{model}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", model]
        cmd += ["--worker-out", str(out)]
        env = dict(os.environ)
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # freed tensors go back to the OS
        env.setdefault("TIMM_FUSED_ATTN", "0")
        # scikit-learn (digits) loads a second libgomp next to torch's; with both spinning,
        # small CPU ops ran ~500x slower on 2 busy cores. Passive waiting avoids it.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.setdefault("WANDB_MODE", "disabled")
        proc = subprocess.run(cmd, env=env)
        if proc.returncode == 0 and out.exists():
            return json.loads(out.read_text())
        return {"error": f"worker exited with code {proc.returncode}"}


def write_results(results: dict[str, Any], out_dir: Path, stem: str) -> str:
    from report import markdown as render
    from targets import evaluate_targets

    results["targets"] = evaluate_targets(results)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2, default=float))
    markdown = render(results)
    (out_dir / f"{stem}.md").write_text(markdown)
    return markdown


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = common.resolve_device(args.device)
    if args.amp == "auto":
        args.amp = "bf16" if device.type == "cuda" else "none"
    if args.worker:
        result = worker(args)
        Path(args.worker_out).write_text(json.dumps(result, default=float))
        return 0
    child_argv = [a for a in argv]
    if "--amp" not in " ".join(argv):
        child_argv += ["--amp", args.amp]
    mode = "quick" if args.quick else "full"
    command = "python benchmarks/overhead.py " + " ".join(argv)
    results: dict[str, Any] = {
        "meta": {
            "command": command.strip(),
            "mode": mode,
            "amp": args.amp,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": common.machine_info(device),
            "peers": common.peer_versions(),
            "warmup_steps": WARMUP_STEPS,
        },
        "models": {},
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.tag or f"{device.type}-{mode}"
    existing = out_dir / f"{stem}.json"
    if args.merge and existing.exists():  # the other models as an earlier command measured them
        earlier = json.loads(existing.read_text())
        for model, entry in earlier.get("models", {}).items():
            entry.setdefault("command", earlier["meta"]["command"])
            entry.setdefault("started", earlier["meta"]["started"])
            results["models"][model] = entry
    start = time.perf_counter()
    for model in args.models:
        print(f"=== {model} ===", flush=True)
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        results["models"][model] = {
            **run_worker_process(model, args, child_argv),
            "command": command.strip(),
            "started": started,
        }
        results["meta"]["seconds"] = round(time.perf_counter() - start, 1)
        markdown = write_results(results, out_dir, stem)  # after each model: partial results
    print(markdown)
    print(f"wrote {out_dir / (stem + '.json')} and {out_dir / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
