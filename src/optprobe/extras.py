"""The optional extras of ``pip install 'optprobe[<extra>]'`` and the modules only they bring.

The library imports without any extra: a module that only an extra installs is imported inside
the function that needs it, through :func:`require`, which names the extra when it is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

#: module (or its top-level package) -> the extra that installs it (pyproject.toml)
EXTRA_OF: dict[str, str] = {
    "wandb": "wandb",
    "wandb_workspaces": "wandb",
    "submitit": "slurm",
    "hydra_plugins.hydra_submitit_launcher": "slurm",
    "lion_pytorch": "optimizers",
    "schedulefree": "optimizers",
    "heavyball": "optimizers",
}


class MissingExtraError(ImportError):
    """A module that one of optprobe's extras installs is not installed; the message says
    which ``pip install`` brings it."""


def _entry(module: str) -> tuple[str, str] | None:
    """(the module of :data:`EXTRA_OF` that ``module`` is or lies in, its extra), or None."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in EXTRA_OF:
            return name, EXTRA_OF[name]
    return None


def extra_of(module: str) -> str | None:
    """The extra that installs ``module`` (a dotted name), or None for any other module."""
    entry = _entry(module)
    return entry[1] if entry else None


def install_hint(extra: str) -> str:
    """The command that installs ``extra``."""
    return f"pip install 'optprobe[{extra}]'"


def missing_message(module: str, extra: str, purpose: str | None = None) -> str:
    """One line: ``module`` is missing, what needed it, and the command that installs it."""
    needed = f" (needed for {purpose})" if purpose else ""
    return (
        f"{module} is not installed{needed}. It comes with optprobe's [{extra}] extra: "
        f"`{install_hint(extra)}` (from a checkout: `pip install -e '.[{extra}]'`)"
    )


def _is_missing(err: ModuleNotFoundError, module: str) -> bool:
    """Whether ``err`` says ``module`` itself (or a package above it) is not there, rather
    than something it imports."""
    name = err.name or ""
    return bool(name) and (module == name or module.startswith(f"{name}."))


def require(module: str, purpose: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``; for a module of an extra that is not installed a
    :class:`MissingExtraError` naming the extra (``purpose``: what needed it)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        extra = extra_of(module)
        if extra is None or not _is_missing(err, module):
            raise
        raise MissingExtraError(missing_message(err.name or module, extra, purpose)) from err


def available(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it; a dotted name imports
    its parent packages)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_target_message(target: str, what: str | None = None) -> str | None:
    """For a Hydra ``_target_`` (``package.module.Name``) in a package that an extra installs
    and that is not installed: the message naming the extra (``what``: what needed it, by
    default the target); else None."""
    entry = _entry(target)
    if entry is None or available(entry[0]):
        return None
    return missing_message(entry[0], entry[1], what or target)


def check_installed(module: str, purpose: str | None = None) -> None:
    """A :class:`MissingExtraError` naming the extra when ``module`` (a module of an extra) is
    not installed; nothing is imported."""
    entry = _entry(module)
    if entry is not None and not available(module):
        raise MissingExtraError(missing_message(entry[0], entry[1], purpose))
