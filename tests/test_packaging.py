"""Packaging: ranges in pyproject.toml, exact pins in constraints.txt, one version string, and a
library that imports without its optional extras (issue #24)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import optprobe
from optprobe.extras import EXTRA_OF, MissingExtraError, extra_of, install_hint, require

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
CONSTRAINTS = ROOT / "constraints.txt"
#: the extras `make setup` must install for the test suite
TEST_EXTRAS = {"dev", "wandb", "slurm", "optimizers"}
#: modules that the library must import without any extra installed
CORE_MODULES = (
    "optprobe",
    "optprobe.probes.base",
    "optprobe.analysis.verdicts",
    "optprobe.run.verdict",
    "optprobe.cli.analyze",
    "optprobe.cli.dashboard",
    "optprobe.run.job",
)


def requirements(section: list[str]) -> list[Requirement]:
    """The requirements of a dependency list, less optprobe's own extras (``optprobe[...]``)."""
    reqs = [Requirement(line) for line in section]
    return [r for r in reqs if canonicalize_name(r.name) != "optprobe"]


def pins() -> dict[str, Version]:
    """constraints.txt as {normalised name: pinned version}; every line must be ``name==x``."""
    out: dict[str, Version] = {}
    for number, raw in enumerate(CONSTRAINTS.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)  # raises on a line that does not parse
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"line {number}: {raw!r} is no pin"
        assert not req.extras and req.marker is None and req.url is None, f"line {number}: {raw!r}"
        name = canonicalize_name(req.name)
        assert name not in out, f"line {number}: {req.name} is pinned twice"
        out[name] = Version(specs[0].version)
    return out


# ----------------------------------------------------------------- ranges and pins
def test_dependencies_are_ranges_with_a_lower_bound():
    deps = requirements(PROJECT["dependencies"])
    assert deps, "no [project].dependencies"
    for req in deps:
        operators = {s.operator for s in req.specifier}
        assert operators, f"{req}: no version range"
        assert not operators & {"==", "==="}, f"{req}: an exact pin belongs in constraints.txt"
        assert operators & {">=", ">", "~="}, f"{req}: no lower bound"


def test_extras_are_ranges_too():
    for extra, section in EXTRAS.items():
        for req in requirements(section):
            operators = {s.operator for s in req.specifier}
            assert not operators & {"==", "==="}, f"[{extra}] {req}: pin it in constraints.txt"


def test_optional_packages_live_in_extras():
    core = {canonicalize_name(r.name) for r in requirements(PROJECT["dependencies"])}
    optional = {
        "wandb": {"wandb", "wandb-workspaces"},
        "slurm": {"hydra-submitit-launcher"},
        "optimizers": {"lion-pytorch", "schedulefree", "heavyball", "opt-einsum"},
        "peers": {"curvlinops-for-pytorch", "backpack-for-pytorch", "cockpit-for-pytorch"},
        "notebook": {"jupyterlab"},
    }
    for extra, names in optional.items():
        assert extra in EXTRAS, f"no [{extra}] extra"
        in_extra = {canonicalize_name(r.name) for r in requirements(EXTRAS[extra])}
        assert names <= in_extra, f"[{extra}] lacks {names - in_extra}"
        assert not names & core, f"{names & core} should be in [{extra}] only"
    assert {"dev", "all"} <= set(EXTRAS)


def test_all_names_existing_extras():
    (ref,) = [Requirement(line) for line in EXTRAS["all"]]
    assert canonicalize_name(ref.name) == "optprobe"
    assert ref.extras and ref.extras <= set(EXTRAS) - {"all"}
    assert {"wandb", "slurm", "optimizers"} <= ref.extras


def test_constraints_pin_every_requirement_within_its_range():
    pinned = pins()
    assert "optprobe" not in pinned, "constraints.txt must not pin optprobe itself"
    sections = {"dependencies": PROJECT["dependencies"], **EXTRAS}
    for where, section in sections.items():
        for req in requirements(section):
            name = canonicalize_name(req.name)
            assert name in pinned, f"{req} ({where}) has no pin in constraints.txt"
            assert req.specifier.contains(pinned[name], prereleases=True), (
                f"constraints.txt pins {name}=={pinned[name]}, outside {req} ({where})"
            )


def test_torch_and_torchvision_are_pinned_together():
    pinned = pins()
    assert pinned["torch"] == Version("2.14.1")
    assert pinned["torchvision"] == Version("0.29.1")


def test_a_line_that_is_no_pin_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "constraints.txt"
    bad.write_text("torch>=2.9\n")
    monkeypatch.setattr(sys.modules[__name__], "CONSTRAINTS", bad)
    with pytest.raises(AssertionError, match="is no pin"):
        pins()


# ----------------------------------------------------------------- one version string
def test_version_comes_from_the_package():
    assert "version" not in PROJECT, "pyproject.toml must not repeat the version"
    assert "version" in PROJECT.get("dynamic", [])
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "optprobe.__version__"
    assert importlib.metadata.version("optprobe") == optprobe.__version__, (
        "the installed metadata is stale: re-install (make setup)"
    )


def test_no_other_copy_of_the_version():
    copies = []
    for path in (ROOT / "src").rglob("*.py"):
        if re.search(r"^__version__\s*=", path.read_text(), re.M):
            copies.append(path.relative_to(ROOT))
    assert copies == [Path("src/optprobe/__init__.py")]
    version = re.escape(optprobe.__version__)
    for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        assert not re.search(rf"optprobe[ =v]*{version}\b", path.read_text()), path


# ----------------------------------------------------------------- without the extras
def run_blocked(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where every module of an extra fails to import."""
    prelude = f"import sys\nfor _name in {sorted(EXTRA_OF)!r}:\n    sys.modules[_name] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def test_the_library_imports_without_the_extras():
    code = f"""
import importlib
for name in ("wandb", "wandb_workspaces", "submitit", "lion_pytorch", "heavyball"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the block of {{name}} does not work")
for module in {CORE_MODULES!r}:
    importlib.import_module(module)
print("imported")
"""
    out = run_blocked(code)
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr[-3000:]


def test_extra_of_names_an_extra_of_pyproject():
    assert set(EXTRA_OF.values()) <= set(EXTRAS)
    assert extra_of("wandb.errors") == "wandb"
    assert extra_of("hydra_plugins.hydra_submitit_launcher.submitit_launcher") == "slurm"
    assert extra_of("lion_pytorch.Lion") == "optimizers"
    assert extra_of("torch.optim") is None and extra_of("hydra_plugins.other") is None


@pytest.fixture
def no_extras(monkeypatch):
    """Every module of an extra fails to import in this process (restored afterwards)."""
    for name in EXTRA_OF:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra(no_extras):
    with pytest.raises(MissingExtraError, match=re.escape(install_hint("wandb"))):
        require("wandb", "a test")
    with pytest.raises(MissingExtraError, match="needed for a test"):
        require("wandb_workspaces", "a test")


def test_require_leaves_other_import_errors_alone(no_extras):
    with pytest.raises(ModuleNotFoundError) as err:
        require("optprobe_no_such_module")
    assert not isinstance(err.value, MissingExtraError)


def test_features_of_an_extra_say_which_extra(no_extras, tmp_path):
    from optprobe.analysis.runs import load_wandb_api_runs
    from optprobe.analysis.wandb_offline import read_wandb_run
    from optprobe.optim.soap import soap
    from optprobe.run.input_checks import unknown_options
    from optprobe.run.wandb_setup import wandb_logger

    wandb = re.escape(install_hint("wandb"))
    with pytest.raises(MissingExtraError, match=wandb):
        load_wandb_api_runs("entity", "project")
    with pytest.raises(MissingExtraError, match=wandb):
        read_wandb_run(tmp_path)
    with pytest.raises(MissingExtraError, match=wandb):
        wandb_logger(str(tmp_path))
    optimizers = re.escape(install_hint("optimizers"))
    with pytest.raises(MissingExtraError, match=optimizers):
        soap([])
    for target in ("lion_pytorch.Lion", "schedulefree.AdamWScheduleFree"):
        entry = OmegaConf.create({"_target_": target, "_partial_": True, "lr": 0.1})
        with pytest.raises(MissingExtraError, match=optimizers):
            unknown_options("optimizer", entry)
    # a torch optimizer still gets its options checked
    entry = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    assert unknown_options("optimizer", entry) is None


def test_the_clis_exit_with_the_extra(no_extras):
    from optprobe.cli import analyze, dashboard

    hint = re.escape(install_hint("wandb"))
    with pytest.raises(SystemExit, match=rf"^optprobe-analyze: .*{hint}"):
        analyze.main(["--source", "wandb", "--entity", "e", "--project", "p"])
    with pytest.raises(SystemExit, match=rf"^optprobe-dashboard: .*{hint}"):
        dashboard.main(["--apply", "dashboard.json"])


def test_the_slurm_launcher_config_names_its_extra():
    text = (ROOT / "conf/hydra/launcher/slurm.yaml").read_text()
    assert install_hint("slurm") in text


# ----------------------------------------------------------------- the Makefile
def makefile_variables(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)\s*:?=\s*(.*?)\s*$", text, re.M))


def expand(line: str, variables: dict[str, str]) -> str:
    for _ in range(5):  # nested $(VAR) references
        line = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m[1], m[0]), line)
    return line


def recipe(text: str, target: str) -> tuple[str, list[str]]:
    """(the prerequisites, the recipe lines) of ``target``'s rule."""
    match = re.search(rf"^{re.escape(target)}:(.*)\n((?:\t.*\n)*)", text, re.M)
    assert match, f"no rule for {target}"
    return match[1], [line.strip() for line in match[2].splitlines()]


def test_make_setup_installs_with_the_constraints_file():
    text = (ROOT / "Makefile").read_text()
    variables = makefile_variables(text)
    prerequisites, lines = recipe(text, "$(STAMP)")
    assert "constraints.txt" in expand(prerequisites, variables).split()
    installs = [expand(line, variables) for line in lines if " -e " in line]
    assert len(installs) == 1, lines
    (install,) = installs
    assert re.search(r"(^|\s)-c constraints\.txt(\s|$)", install), install
    extras = re.search(r"-e '\.\[([^\]]*)\]'", install)
    assert extras and TEST_EXTRAS <= set(extras[1].split(",")), install
    assert set(extras[1].split(",")) <= set(EXTRAS), install
    assert "--no-deps $(DATA_PACKAGES)" in "\n".join(lines)  # the data packages as they were


def test_every_make_install_of_optprobe_uses_the_constraints_file():
    text = (ROOT / "Makefile").read_text()
    variables = makefile_variables(text)
    lines = [expand(line, variables) for line in text.splitlines() if line.startswith("\t")]
    installs = [line for line in lines if "pip install" in line and " -e " in line]
    assert len(installs) >= 4, installs  # setup, notebook, bench, bench-quick
    for line in installs:
        assert "-c constraints.txt" in line, line
        assert "==" not in line, f"{line}: the pins are in constraints.txt"
    for target in ("bench", "bench-quick"):
        _, lines = recipe(text, target)
        assert any("'.[peers]'" in line and "-c $(CONSTRAINTS)" in line for line in lines)
