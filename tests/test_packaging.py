"""A real peer installs the core alone; the simulator is the ``[sim]`` extra.

``pip install hivemind-sim`` brings hivemind_core (torch, msgpack, cryptography, numpy);
``pip install 'hivemind-sim[sim]'`` adds what hivemind_sim needs (simpy, networkx, rich,
matplotlib). Imports are checked against pyproject.toml, and core-only installs are imitated by
blocking the simulator's packages in a subprocess.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
IMPORT_NAMES = {
    "scikit-learn": "sklearn",
    "pyyaml": "yaml",
    "prometheus-client": "prometheus_client",
}  # distribution -> module, where they differ
SIM_EXTRA = {"simpy", "networkx", "rich", "matplotlib", "pydantic", "yaml"}


def module_names(requirements: list[str]) -> set[str]:
    """Top-level modules of requirements such as 'torch>=2.2,<3' (self-references left out)."""
    names = {re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower() for requirement in requirements}
    return {IMPORT_NAMES.get(name, name) for name in names if name != PROJECT["name"]}


def third_party_imports(package: str, *, top_level_only: bool = False) -> set[str]:
    """Third-party modules ``package`` imports; ``top_level_only``: those imported on import of
    its modules (imports inside functions load only when that function runs)."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        found |= third_party_imports_of(path, top_level_only=top_level_only)
    return found


def third_party_imports_of(path: Path, *, top_level_only: bool = False) -> set[str]:
    found = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Try) and top_level_only:  # a guarded top-level import
            nodes = [n for block in (node.body, *[h.body for h in node.handlers]) for n in block]
        else:
            nodes = [node]
        for each in nodes:
            if isinstance(each, ast.Import):
                found |= {alias.name.split(".")[0] for alias in each.names}
            elif isinstance(each, ast.ImportFrom) and each.level == 0 and each.module:
                found.add(each.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"hivemind_core", "hivemind_sim"}


OPTIONAL_CORE_MODULES = {"prometheus.py"}
"""Core modules only a flag imports (``--metrics-port``), each needing an extra of its own."""


def test_the_core_needs_only_its_own_dependencies() -> None:
    core = module_names(PROJECT["dependencies"])
    extras = PROJECT["optional-dependencies"]
    assert core == {"torch", "msgpack", "cryptography", "numpy"}
    on_import = set()
    for path in (ROOT / "hivemind_core").rglob("*.py"):
        if path.name not in OPTIONAL_CORE_MODULES:
            on_import |= third_party_imports_of(path, top_level_only=True)
    assert on_import <= core, "importing the core needs only its own dependencies"
    # lazily: the digits task (the examples extra) and Prometheus metrics (the metrics extra)
    optional = module_names(extras["examples"]) | module_names(extras["metrics"])
    assert third_party_imports("hivemind_core") <= core | optional
    for name in OPTIONAL_CORE_MODULES:
        source = "\n".join(p.read_text() for p in (ROOT / "hivemind_core").rglob("*.py") if p.name != name)
        assert f"from .{name[:-3]} import" in source and f"import {name[:-3]}\n" not in source


def test_the_simulator_needs_only_the_sim_extra() -> None:
    extras = PROJECT["optional-dependencies"]
    assert module_names(extras["sim"]) == SIM_EXTRA
    core = module_names(PROJECT["dependencies"])
    testing = third_party_imports("hivemind_sim/testing", top_level_only=True)  # its own extra
    assert testing <= module_names(extras["testing"]) | SIM_EXTRA
    assert third_party_imports("hivemind_sim", top_level_only=True) - testing <= core | SIM_EXTRA
    optional = module_names(extras["examples"]) | module_names(extras.get("cluster", [])) | testing
    optional |= module_names(extras["deploy"])  # pyroute2, imported by deploy --netns only
    assert third_party_imports("hivemind_sim") <= core | SIM_EXTRA | optional, "lazy imports of other extras"
    assert "hivemind-sim[sim]" in extras["test"], "the tests run the simulator"


def run_without_the_simulator(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the [sim] extra's packages cannot be imported."""
    block = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in sorted(SIM_EXTRA))
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, timeout=60)


def test_a_real_peer_runs_without_the_simulator() -> None:
    result = run_without_the_simulator(
        "import hivemind_core.cli, hivemind_core.dht, hivemind_core.moe.client, hivemind_core.moe.server\n"
        "assert hivemind_core.cli.main(['ping', '127.0.0.1:1', '--count', '1']) == 1\n"
    )
    assert result.returncode == 0, result.stderr


def test_hivemind_sim_without_the_sim_extra_says_what_to_install() -> None:
    code = "from hivemind_sim.cli import main\nsys.exit(main(['run', 'scenarios/quickstart.yaml']))\n"
    result = run_without_the_simulator(code)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()  # one line, no traceback
    assert re.fullmatch(r"hivemind-sim: error: .* pip install 'hivemind-sim\[sim\]'", line), line
