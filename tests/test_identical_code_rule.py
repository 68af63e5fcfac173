"""hivemind_core must run unchanged in simulation: no wall clock, sleep, global random or sockets.

Only the TCP transport may open sockets, and only the real compute executor and the
real-mode loop bridge may start threads (those files are listed below as they appear).
Nothing in hivemind_core may import the simulator or its libraries, change process-wide
random or torch state, or keep mutable state at module level: every peer of a simulation
shares the process, so such state would leak from one peer into the others.

Names are resolved through the file's imports, so ``import random as r; r.random()``,
``from torch import manual_seed`` and ``import torch as t; t.cuda.manual_seed(0)`` are caught.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
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
THREAD_STARTERS = {"asyncio.to_thread": "starts a thread: use the injected executor"}
# torch.manual_seed, torch.cuda.manual_seed_all, torch.random.set_rng_state, ...: any torch module
TORCH_RNG_SETTERS = {
    "manual_seed",
    "manual_seed_all",
    "seed",
    "seed_all",
    "set_rng_state",
    "set_rng_state_all",
}
TORCH_RNG_SETTERS |= {"fork_rng"}  # saves and restores the global state around a block: threads race on it
TORCH_SETTINGS = {
    "torch.set_num_threads",
    "torch.set_num_interop_threads",
    "torch.set_default_dtype",
    "torch.set_default_device",
    "torch.set_default_tensor_type",
    "torch.use_deterministic_algorithms",
    "torch.set_deterministic_debug_mode",
    "torch.set_float32_matmul_precision",
    "torch.set_flush_denormal",
    "torch.set_printoptions",
    "torch.set_warn_always",
    "torch.autograd.set_detect_anomaly",
}
MUTABLE_FACTORIES = {
    "dict",
    "list",
    "set",
    "bytearray",
    "collections.defaultdict",
    "collections.OrderedDict",
    "collections.deque",
    "collections.Counter",
    "collections.ChainMap",
    "itertools.count",
    "random.Random",
    "weakref.WeakValueDictionary",
    "weakref.WeakKeyDictionary",
    "weakref.WeakSet",
    "asyncio.Queue",
    "asyncio.Lock",
    "asyncio.Event",
}
MUTABLE_LITERALS = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)
UNBOUNDED_CACHE = "caches without bound for the whole process: use a bounded functools.lru_cache"
EXEMPT = {
    "net/tcp/sockets.py": {"socket_calls", "socket"},
    "world.py": {"time"},
    "bridge.py": {"threading", "concurrent"},  # blocks a thread on futures of the loop
    "moe/server/device.py": {"threading", "concurrent"},
    # the real-mode trainer: a thread per batch in flight, step times on the wall clock; the
    # simulator's trainers run its model and step (training/model.py) under the baton instead
    "training/trainer.py": {"threading", "concurrent", "time"},
    "cli.py": {"torch_settings"},  # the command line owns its process: --torch-threads
    # a real peer's channel to the deployer that started it: records stamped with the wall
    # clock (the deployer's clock), written from the trainer's threads under a lock
    "operator.py": {"threading", "time"},
    # one copy of each equal, immutable contact, held weakly for the routing tables that hold
    # it: shared values, not shared state (no peer can tell it is shared)
    "dht/routing.py": {"shared_values"},
}


def import_aliases(tree: ast.AST) -> dict[str, str]:
    """Each name the file's imports bind, mapped to the dotted name it stands for."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:  # `import torch.cuda` binds `torch`
                    root = alias.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            for alias in node.names:
                aliases[alias.asname or alias.name] = (
                    f"{module}.{alias.name}" if node.module else module + alias.name
                )
    return aliases


def dotted_name(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``t.cuda.manual_seed`` as 'torch.cuda.manual_seed' when ``t`` is torch; None if not a name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def why_forbidden(name: str, exempt: frozenset[str] | set[str]) -> str | None:
    """Why using the fully qualified ``name`` breaks the rule, or None if it does not."""
    parts = name.split(".")
    if parts[0] == "random" and len(parts) > 1 and parts[1] != "Random":
        return "draws from the global random module: take a random.Random"
    if tuple(parts[-2:]) in FORBIDDEN_ATTRIBUTES:
        return FORBIDDEN_ATTRIBUTES[tuple(parts[-2:])]
    if name in THREAD_STARTERS and "threading" not in exempt:
        return THREAD_STARTERS[name]
    if parts[0] == "torch" and parts[-1] in TORCH_RNG_SETTERS:
        return "changes torch's process-wide random state: take a torch.Generator or a seed"
    if name in TORCH_SETTINGS and "torch_settings" not in exempt:
        return "changes a process-wide torch setting: leave it to the application"
    if name == "functools.cache":
        return UNBOUNDED_CACHE
    return None


def is_mutable(value: ast.AST, aliases: dict[str, str]) -> bool:
    if isinstance(value, MUTABLE_LITERALS):
        return True
    return isinstance(value, ast.Call) and dotted_name(value.func, aliases) in MUTABLE_FACTORIES


def module_level_assignments(body: list[ast.stmt]) -> Iterator[tuple[ast.stmt, ast.AST, ast.AST]]:
    """(statement, target, value) of every assignment run at import time, in if/try/with too."""
    for statement in body:
        if isinstance(statement, ast.Assign):
            for target in statement.targets:
                yield statement, target, statement.value
        elif isinstance(statement, ast.AnnAssign | ast.AugAssign) and statement.value is not None:
            yield statement, statement.target, statement.value
        elif isinstance(statement, ast.If | ast.For | ast.While | ast.With | ast.Try):
            blocks = [statement.body, getattr(statement, "orelse", []), getattr(statement, "finalbody", [])]
            blocks += [handler.body for handler in getattr(statement, "handlers", [])]
            for block in blocks:
                yield from module_level_assignments(block)


def bound_names(target: ast.AST, value: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """(name, value) pairs an assignment binds; ``a, b = [], {}`` pairs them up."""
    if isinstance(target, ast.Name):
        yield target.id, value
    elif isinstance(target, ast.Tuple | ast.List):
        values = value.elts if isinstance(value, ast.Tuple | ast.List) else [value] * len(target.elts)
        for inner_target, inner_value in zip(target.elts, values, strict=False):
            yield from bound_names(inner_target, inner_value)


def is_constant_name(name: str) -> bool:
    return name.isupper() or (name.startswith("__") and name.endswith("__"))


def is_unbounded_lru_cache(call: ast.Call, aliases: dict[str, str]) -> bool:
    if dotted_name(call.func, aliases) != "functools.lru_cache":
        return False
    sizes = [*call.args[:1], *(k.value for k in call.keywords if k.arg == "maxsize")]
    return any(isinstance(size, ast.Constant) and size.value is None for size in sizes)


def runs_on_the_default_executor(call: ast.Call) -> bool:
    """``loop.run_in_executor(None, f)``: asyncio's own thread pool, not an injected executor."""
    if not isinstance(call.func, ast.Attribute) or call.func.attr != "run_in_executor":
        return False
    executor = call.args[0] if call.args else None
    return executor is None or (isinstance(executor, ast.Constant) and executor.value is None)


def attribute_root(node: ast.Attribute) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def is_cached_method(method: ast.stmt, aliases: dict[str, str]) -> bool:
    """A method under lru_cache: the cache is the class's, keyed by (and holding on to) ``self``."""
    if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef) or not method.args.args:
        return False
    return method.args.args[0].arg == "self" and any(
        dotted_name(d.func if isinstance(d, ast.Call) else d, aliases) == "functools.lru_cache"
        for d in method.decorator_list
    )


def violations(source: str, exempt: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Every forbidden construct in ``source``, as 'line N: what and why'."""
    found: list[tuple[int, str]] = []
    tree = ast.parse(source)
    aliases = import_aliases(tree)

    def flag(node: ast.stmt | ast.expr, message: str) -> None:
        found.append((node.lineno, f"line {node.lineno}: {message}"))

    def check_module(node: ast.AST, module: str) -> None:
        root = module.split(".")[0]
        if root in NEVER:
            flag(node, f"imports {module}: hivemind_core must not depend on the simulator")
        elif root in FORBIDDEN_MODULES and root not in exempt:
            flag(node, f"imports {module}, which {FORBIDDEN_MODULES[root]}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_module(node, alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            check_module(node, node.module)
            for alias in node.names:
                reason = why_forbidden(f"{node.module}.{alias.name}", exempt)
                if reason:
                    flag(node, f"imports {node.module}.{alias.name}, which {reason}")
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            name = dotted_name(node, aliases)
            reason = why_forbidden(name, exempt) if name else None
            if reason:
                flag(node, f"uses {name}, which {reason}")
            if node.attr in SOCKET_CALLS and "socket_calls" not in exempt:
                flag(node, f"calls {node.attr}, which opens sockets: use a Transport")
        elif isinstance(node, ast.Attribute) and attribute_root(node) in aliases:  # stored or deleted
            flag(
                node, f"assigns to {dotted_name(node, aliases)}: changes another module for the whole process"
            )
        elif isinstance(node, ast.Call):
            if runs_on_the_default_executor(node) and "threading" not in exempt:
                flag(node, "calls run_in_executor(None), which starts threads: use the injected executor")
            if is_unbounded_lru_cache(node, aliases):
                flag(node, f"uses lru_cache(maxsize=None), which {UNBOUNDED_CACHE}")
        elif isinstance(node, ast.Global):
            flag(node, f"declares global {', '.join(node.names)}: module-level state; keep it on an object")
        elif isinstance(node, ast.ClassDef):
            for method in node.body:
                if is_cached_method(method, aliases):
                    flag(
                        method, f"caches method {method.name}: one cache for every instance keeps them alive"
                    )

    for statement, target, value in module_level_assignments(tree.body):
        for name, bound in bound_names(target, value):
            if not is_constant_name(name) and is_mutable(bound, aliases) and "shared_values" not in exempt:
                flag(statement, f"module-level mutable {name}: state shared by every peer in the process")
    return [message for _, message in sorted(found)]


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


def assert_catches(source: str, expected: list[str]) -> None:
    found = "\n".join(violations(source))
    for line in expected:
        assert line in found, f"missed: {line}\n{found}"


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
    assert_catches(
        bad,
        [
            "line 2: imports time",
            "line 4: imports random.choice, which draws from the global random module",
            "line 5: imports socket",
            "line 6: imports threading",
            "line 7: imports simpy",
            "line 8: imports hivemind_sim",
            "line 12: uses random.random, which draws from the global random module",
            "line 13: uses os.urandom",
            "line 14: uses datetime.datetime.now, which reads the wall clock",
            "line 16: calls create_connection",
        ],
    )


def test_the_checker_sees_through_aliases() -> None:
    bad = """
import random as r
from random import random
import torch as t
from torch import manual_seed
from torch import cuda
import asyncio as aio
import functools as ft
a = r.random()
t.manual_seed(0)
cuda.manual_seed_all(0)
t.random.manual_seed(0)
aio.to_thread(print)
@ft.cache
def g(): ...
"""
    assert_catches(
        bad,
        [
            "line 3: imports random.random, which draws from the global random module",
            "line 5: imports torch.manual_seed, which changes torch's process-wide random state",
            "line 9: uses random.random, which draws from the global random module",
            "line 10: uses torch.manual_seed, which changes torch's process-wide random state",
            "line 11: uses torch.cuda.manual_seed_all, which changes torch's process-wide random state",
            "line 12: uses torch.random.manual_seed, which changes torch's process-wide random state",
            "line 13: uses asyncio.to_thread, which starts a thread",
            "line 14: uses functools.cache, which caches without bound",
        ],
    )


def test_the_checker_catches_process_wide_torch_state_and_threads() -> None:
    bad = """
import asyncio
import torch
torch.seed()
torch.set_rng_state(state)
torch.cuda.manual_seed(1)
torch.set_num_threads(4)
torch.backends.cudnn.deterministic = True
async def f():
    await asyncio.to_thread(print)
    await asyncio.get_running_loop().run_in_executor(None, print)
"""
    assert_catches(
        bad,
        [
            "line 4: uses torch.seed, which changes torch's process-wide random state",
            "line 5: uses torch.set_rng_state, which changes torch's process-wide random state",
            "line 6: uses torch.cuda.manual_seed, which changes torch's process-wide random state",
            "line 7: uses torch.set_num_threads, which changes a process-wide torch setting",
            "line 8: assigns to torch.backends.cudnn.deterministic: changes another module",
            "line 10: uses asyncio.to_thread, which starts a thread",
            "line 11: calls run_in_executor(None), which starts threads",
        ],
    )


def test_the_checker_catches_module_level_mutable_state() -> None:
    bad = """
import collections
import functools
import random
from collections import defaultdict, deque
_contacts: dict[int, str] = {}
seen = set()
by_peer = defaultdict(list)
order = collections.OrderedDict()
recent = deque(maxlen=8)
squares = [i * i for i in range(4)]
a, b = [], 0
if True:
    registry = {}
def remember(x):
    global _contacts
    _contacts = {x: x}
@functools.lru_cache(maxsize=None)
def f(x): ...
@functools.lru_cache(None)
def g(x): ...
class Node:
    @functools.lru_cache(maxsize=64)
    def h(self, x): ...
    @staticmethod
    @functools.lru_cache(maxsize=64)
    def pure(x): ...
rng = random.Random(3)
"""
    assert_catches(
        bad,
        [
            "line 6: module-level mutable _contacts",
            "line 7: module-level mutable seen",
            "line 8: module-level mutable by_peer",
            "line 9: module-level mutable order",
            "line 10: module-level mutable recent",
            "line 11: module-level mutable squares",
            "line 12: module-level mutable a:",
            "line 14: module-level mutable registry",
            "line 16: declares global _contacts",
            "line 18: uses lru_cache(maxsize=None), which caches without bound",
            "line 20: uses lru_cache(maxsize=None)",
            "line 24: caches method h",
            "line 28: module-level mutable rng",
        ],
    )
    assert "mutable b:" not in "\n".join(violations(bad)) and "method pure" not in "\n".join(violations(bad))


def test_the_checker_allows_what_the_rule_allows() -> None:
    allowed = """
import asyncio
import functools
import logging
import random
from functools import lru_cache
from random import Random
import torch
__all__ = ["f", "g"]
LIMITS = {"frames": 64}
KINDS = frozenset({"a", "b"})
logger = logging.getLogger(__name__)
generator = torch.Generator().manual_seed(3)
@functools.lru_cache(maxsize=1 << 16)
def f(x): ...
@lru_cache
def g(x): ...
def h(rng: random.Random, executor):
    table, own = {}, Random(3)
    return rng.random(), asyncio.get_running_loop().run_in_executor(executor, print)
"""
    assert violations(allowed) == []
