"""hivemind_core must run unchanged in simulation: no wall clock, sleep, global random or sockets.

Only the TCP transport may open sockets, and only the real compute executor and the
real-mode loop bridge may start threads (those files are listed below as they appear).
Nothing in hivemind_core may import the simulator or its libraries.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hivemind_core

CORE = Path(hivemind_core.__file__).parent

NEVER = {"hivemind_sim", "simpy", "networkx"}
FORBIDDEN_MODULES = {
    "time": "reads the wall clock or sleeps: use loop.time() / asyncio.sleep",
    "socket": "touches sockets: use a Transport",
    "select": "touches sockets: use a Transport",
    "selectors": "touches sockets: use a Transport",
    "ssl": "touches sockets: use a Transport",
    "threading": "starts threads: use the injected executor",
    "concurrent": "starts threads: use the injected executor",
    "multiprocessing": "starts processes: one process per peer",
    "subprocess": "starts processes: one process per peer",
    "secrets": "draws unseeded randomness: take a random.Random",
    "uuid": "draws unseeded randomness: take a random.Random",
}
FORBIDDEN_ATTRIBUTES = {
    ("os", "urandom"): "draws unseeded randomness: take a random.Random",
    ("os", "getrandom"): "draws unseeded randomness: take a random.Random",
    ("datetime", "now"): "reads the wall clock: use loop.time()",
    ("datetime", "utcnow"): "reads the wall clock: use loop.time()",
    ("datetime", "today"): "reads the wall clock: use loop.time()",
    ("date", "today"): "reads the wall clock: use loop.time()",
}
SOCKET_CALLS = {
    "create_connection",
    "create_server",
    "open_connection",
    "start_server",
    "create_datagram_endpoint",
    "create_unix_connection",
    "create_unix_server",
    "sock_connect",
    "sock_accept",
    "sock_recv",
    "sock_sendall",
}
EXEMPT = {
    "net/tcp.py": {"socket_calls", "socket"},
    "world.py": {"time"},
    "bridge.py": {"threading"},
    "moe/server/device.py": {"threading", "concurrent"},
}


def violations(source: str, exempt: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Every forbidden construct in ``source``, as 'line N: what and why'."""
    found: list[str] = []

    def flag(node: ast.AST, message: str) -> None:
        found.append(f"line {getattr(node, 'lineno', '?')}: {message}")

    def check_module(node: ast.AST, module: str, names: list[str]) -> None:
        root = module.split(".")[0]
        if root in NEVER:
            flag(node, f"imports {module}: hivemind_core must not depend on the simulator")
        elif root in FORBIDDEN_MODULES and root not in exempt:
            flag(node, f"imports {module}, which {FORBIDDEN_MODULES[root]}")
        elif root == "random" and any(name != "Random" for name in names):
            flag(node, "uses the global random module: take a random.Random")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_module(node, alias.name, ["Random"])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            check_module(node, node.module, [alias.name for alias in node.names])
            for alias in node.names:
                key = (node.module.split(".")[-1], alias.name)
                if key in FORBIDDEN_ATTRIBUTES:
                    flag(node, f"imports {alias.name}, which {FORBIDDEN_ATTRIBUTES[key]}")
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name):
                key = (node.value.id, node.attr)
                if key in FORBIDDEN_ATTRIBUTES:
                    flag(node, f"calls {node.value.id}.{node.attr}, which {FORBIDDEN_ATTRIBUTES[key]}")
                if node.value.id == "random" and node.attr != "Random":
                    flag(node, f"calls random.{node.attr}: take a random.Random")
            if node.attr in SOCKET_CALLS and "socket_calls" not in exempt:
                flag(node, f"calls {node.attr}, which opens sockets: use a Transport")
    return found


def test_hivemind_core_follows_the_rule() -> None:
    problems = []
    for path in sorted(CORE.rglob("*.py")):
        relative = path.relative_to(CORE).as_posix()
        for problem in violations(path.read_text(), EXEMPT.get(relative, set())):
            problems.append(f"hivemind_core/{relative} {problem}")
    assert not problems, "\n".join(problems)


def test_every_exemption_names_a_real_file() -> None:
    for relative in EXEMPT:
        assert (CORE / relative).is_file(), f"stale exemption: {relative}"


def test_the_checker_catches_each_kind_of_violation() -> None:
    bad = """
import time
import random
from random import choice
import socket
import threading
import simpy
from hivemind_sim import Simulation
import os
from datetime import datetime
x = time.monotonic()
y = random.random()
z = os.urandom(8)
w = datetime.now()
async def f(loop):
    await loop.create_connection(None, "h", 1)
"""
    found = "\n".join(violations(bad))
    for expected in [
        "line 2: imports time",
        "line 4: uses the global random module",
        "line 5: imports socket",
        "line 6: imports threading",
        "line 7: imports simpy",
        "line 8: imports hivemind_sim",
        "line 12: calls random.random",
        "line 13: calls os.urandom",
        "line 14: calls datetime.now",
        "line 16: calls create_connection",
    ]:
        assert expected in found, f"missed: {expected}\n{found}"
    allowed = "import random\nrng = random.Random(3)\nfrom random import Random\n"
    assert violations(allowed) == []
