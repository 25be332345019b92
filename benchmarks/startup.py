"""Command-line latency: seconds until ``train.py --cfg job`` and a typo'd option answer,
next to a bare ``python -c pass`` (the interpreter's own start), median of ``--reps`` runs.

    python benchmarks/startup.py [--reps 5]

The target (issue 15) is under 2 s for both on a quiet machine: Hydra composes the config
before torch and Lightning are imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "train.py --cfg job": ["train.py", "--cfg", "job"],
    "train.py optimizer=nonexistent": ["train.py", "optimizer=nonexistent"],
}


def seconds(args: list[str], log_dir: str) -> float:
    """Wall seconds of one ``python <args>`` run in the repository root."""
    env = {**os.environ, "OPTPROBE_LOG_DIR": log_dir}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="runs per command (median shown)")
    reps = parser.parse_args().reps
    with tempfile.TemporaryDirectory() as log_dir:
        medians = {
            name: statistics.median(seconds(args, log_dir) for _ in range(reps))
            for name, args in COMMANDS.items()
        }
    base = medians["python -c pass"]
    print(f"{'command':<34} {'seconds':>8} {'minus python':>13}")
    for name, value in medians.items():
        print(f"{name:<34} {value:8.2f} {value - base:13.2f}")
    print(f"(median of {reps} runs; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
