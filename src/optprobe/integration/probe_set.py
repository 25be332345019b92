"""Probe callbacks by name, for code that builds them without Hydra (``probes=("step",
"curvature")`` or ``{"curvature": {"every_n_steps": 10}}``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from optprobe.probes.base import ProbeCallback
from optprobe.probes.curvature import CurvatureProbe
from optprobe.probes.noise import NoiseProbe
from optprobe.probes.reference import ReferenceProbe
from optprobe.probes.step import StepProbe
from optprobe.probes.target import ProbeTarget

PROBE_CLASSES: dict[str, type[ProbeCallback]] = {
    cls.default_name: cls for cls in (StepProbe, CurvatureProbe, NoiseProbe, ReferenceProbe)
}
"""Entry name -> probe class (the names of conf/probes)."""

DEFAULT_PROBES = ("step", "curvature", "noise")
"""What ``probes=None`` turns on: each at its class's default cadence."""

ProbeChoice = Iterable[str] | Mapping[str, Mapping[str, Any] | None]


def build_probes(probes: ProbeChoice | None, target: ProbeTarget) -> list[ProbeCallback]:
    """The probe callbacks of ``probes`` (names, or name -> keyword arguments of the probe's
    class; None entries are left out), each reading the network and loss of ``target``."""
    chosen = DEFAULT_PROBES if probes is None else probes
    if isinstance(chosen, str):
        raise TypeError(f"probes={chosen!r}: pass a list of names, e.g. probes=[{chosen!r}]")
    entries = chosen.items() if isinstance(chosen, Mapping) else ((n, {}) for n in chosen)
    built = []
    for name, kwargs in entries:
        if kwargs is None:
            continue
        if name not in PROBE_CLASSES:
            known = ", ".join(sorted(PROBE_CLASSES))
            raise ValueError(f"probes: no probe named {name!r}; the probes are {known}")
        built.append(PROBE_CLASSES[name](**{**dict(kwargs), "target": target}))
    if not built:
        raise ValueError("probes: no probe is turned on; name at least one, e.g. ['step']")
    return built
