"""Checks that run inside a namespace of their own, for tests/test_netns.py.

``python tests/netns_checks.py CHECK RESULT.json`` is started through ``reexec_in_namespace``
(root in fresh user, network, mount and PID namespaces); it builds a ``NamespaceNetwork``,
runs CHECK against real processes in it and writes what it measured to RESULT.json, for the
test (outside) to judge. Every wait is for a line a process prints or for its exit, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from hivemind_sim.deploy.netns import NamespaceNetwork

CORE = [sys.executable, "-m", "hivemind_core.cli"]
PORT = 7000
HIDDEN = "16"


class Proc:
    """A process started in a peer's namespace, read line by line; ended by its PID."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, network: NamespaceNetwork, name: str, argv: Sequence[str]) -> Proc:
        process = await asyncio.create_subprocess_exec(
            *network.command(name, argv), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        return cls(name, process)

    async def line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line (from now on) matching ``pattern``; fails at exit or after ``timeout``."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.process.stdout.readline()
                if not raw:
                    raise AssertionError(f"{self.name} ended without {pattern!r}: {self.lines[-20:]}")
                self.lines.append(raw.decode(errors="replace").rstrip())
                found = re.search(pattern, self.lines[-1])
                if found:
                    return found

    async def finish(self, timeout: float) -> int:
        """Read to the end and wait for the exit."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            async for raw in self.process.stdout:
                self.lines.append(raw.decode(errors="replace").rstrip())
            return await self.process.wait()

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                async with asyncio.timeout(15):
                    await self.process.communicate()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def train(network: NamespaceNetwork, procs: list[Proc]) -> dict[str, Any]:
    """Two expert servers and a trainer, each in its namespace, joined through the first."""
    for name in ("servers-0", "servers-1", "trainer"):
        network.add(name)
    first = f"{network.host('servers-0')}:{PORT}"
    common = ["--hidden-dim", HIDDEN, "--torch-threads", "1", "--port", str(PORT)]
    announced = []
    for row, name in enumerate(("servers-0", "servers-1")):  # the second joins through the first
        argv = [*CORE, "expert-server", "--experts", f"ffn.{row}.[0:4]", *common]
        argv += ["--host", network.host(name), "--duration", "120", "--announce-period", "2"]
        if row:
            argv += ["--initial-peers", first]
        procs.append(await Proc.start(network, name, argv))
        announced.append((await procs[-1].line(r"listening on (\S+)", 60)).group(1))
    trainer = await Proc.start(
        network,
        "trainer",
        [
            *CORE, "train", "--grid", "ffn.2x4", "--k-best", "4", *common, "--steps", "60",
            "--status-interval", "1", "--duration", "60", "--host", network.host("trainer"),
            "--initial-peers", first,
        ],
    )  # fmt: skip
    procs.append(trainer)
    code = await trainer.finish(90)
    return {"announced": announced, "trainer_exit": code, "trainer": trainer.lines}


async def rates(network: NamespaceNetwork, procs: list[Proc]) -> dict[str, Any]:
    """Seconds to move ``size`` bytes to and from a peer with 8 Mbit/s links, then uncapped."""
    size, rate = 1_000_000, 8_000_000
    address = network.add("capped", uplink_bps=rate, downlink_bps=rate)
    times: dict[str, float] = {}
    for label in ("down_capped", "up_capped", "down_free", "up_free"):
        if label == "down_free":
            network.set_rates("capped", None, None)
        sending = label.startswith("up")  # the peer sends to the deployer (its uplink)
        server = await Proc.start(network, "capped", [sys.executable, "-c", ENDPOINT, address, str(size)])
        procs.append(server)
        await server.line("^ready$", 30)
        times[label] = await asyncio.to_thread(transfer, address, size, receive=sending)
        assert await server.finish(30) == 0, server.lines
    return {"size": size, "rate": rate, "seconds": times}


ENDPOINT = """
import socket, sys
listener = socket.create_server((sys.argv[1], 9000))
print("ready", flush=True)
connection, _ = listener.accept()
mode = connection.recv(1)
if mode == b"r":  # the other side receives
    connection.sendall(bytes(int(sys.argv[2])))
else:
    received = len(mode)
    while chunk := connection.recv(1 << 16):
        received += len(chunk)
    connection.sendall(str(received).encode())
connection.close()
"""


def transfer(address: str, size: int, *, receive: bool) -> float:
    """Seconds until ``size`` bytes reached their end, sent by the deployer or by the peer."""
    with socket.create_connection((address, 9000), timeout=30) as connection:
        started = time.monotonic()
        if receive:
            connection.sendall(b"r")
            received = 0
            while chunk := connection.recv(1 << 16):
                received += len(chunk)
        else:
            connection.sendall(b"s" + bytes(size - 1))
            connection.shutdown(socket.SHUT_WR)
            received = int(connection.recv(64))
        elapsed = time.monotonic() - started
    assert received == size, (received, size)
    return elapsed


async def partition(network: NamespaceNetwork, procs: list[Proc]) -> dict[str, Any]:
    """Which peers reach which: on one bridge, cut into {a, b} | {c}, and healed."""
    names = ("a", "b", "c")
    for name in names:
        network.add(name)
        procs.append(
            await Proc.start(
                network, name, [*CORE, "serve", "--host", network.host(name), "--port", str(PORT)]
            )
        )
    for proc in procs:
        await proc.line("listening on", 30)
    pairs = [("a", "b"), ("b", "a"), ("a", "c"), ("c", "b")]

    async def reach() -> dict[str, bool]:
        answers = await asyncio.gather(*(ping(network, x, f"{network.host(y)}:{PORT}") for x, y in pairs))
        return {f"{x}->{y}": answer for (x, y), answer in zip(pairs, answers, strict=True)}

    seen = {"joined": await reach()}
    network.partition([["a", "b"], ["c"]])
    seen["cut"] = await reach()
    network.heal()
    seen["healed"] = await reach()
    return seen


async def ping(network: NamespaceNetwork, source: str, endpoint: str) -> bool:
    """Whether ``hivemind-core ping`` from ``source``'s namespace gets an answer from ``endpoint``."""
    argv = [*CORE, "ping", endpoint, "--count", "1", "--timeout", "1.5"]
    process = await Proc.start(network, source, argv)
    return await process.finish(30) == 0


CHECKS: dict[str, Callable[[NamespaceNetwork, list[Proc]], Awaitable[dict[str, Any]]]] = {
    "train": train,
    "rates": rates,
    "partition": partition,
}


async def run(check: str) -> dict[str, Any]:
    procs: list[Proc] = []
    with NamespaceNetwork() as network:
        try:
            return await CHECKS[check](network, procs)
        finally:
            for proc in reversed(procs):
                await proc.stop()


def main(argv: Sequence[str]) -> int:
    check, result = argv
    Path(result).write_text(json.dumps(asyncio.run(run(check))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
