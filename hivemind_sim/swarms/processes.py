"""Real peers as child processes on this machine: the console scripts, started and stopped.

Tests, benchmarks and examples use these to run DHT peers and expert servers as separate OS
processes over loopback TCP, the way they would run on real machines.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence


class PeerProcess:
    """``hivemind-core <command> ...`` in a child process, which it ends by its PID."""

    def __init__(self, command: str, *args: str, banner: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hivemind_core.cli", command, *args], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.banner = self.process.stdout.readline().strip()
        if not self.banner.startswith(banner):
            self.stop()
            raise RuntimeError(f"hivemind-core {command} did not start: {self.banner!r}")
        listening = re.search(r"listening on (\S+?)(?:,|$|\s)", self.banner)
        self.endpoint = listening.group(1) if listening else ""

    def lines(self) -> Iterator[str]:
        """What it prints after its banner, line by line, until it exits (blocking)."""
        assert self.process.stdout is not None
        yield from (line.rstrip("\n") for line in self.process.stdout)

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: signal.Signals) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 30) -> str:
        """Ask it to stop (waking it first if frozen); returns what it printed since the banner."""
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)
            self.process.terminate()
        output, _ = self.process.communicate(timeout=timeout)
        return output

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def dht_peer(*args: str) -> PeerProcess:
    return PeerProcess("dht", *args, banner="dht peer ")


def expert_server(
    experts: str, *, hidden_dim: int, initial_peers: Sequence[str] = (), args: Sequence[str] = ()
) -> PeerProcess:
    """An expert server hosting the UIDs matched by ``experts`` (e.g. ``ffn.[0:4]``)."""
    command = ["--experts", experts, "--hidden-dim", str(hidden_dim), *args]
    if initial_peers:
        command += ["--initial-peers", *initial_peers]
    return PeerProcess("expert-server", *command, banner="expert server with")


def rpc_peer(*args: str) -> PeerProcess:
    return PeerProcess("serve", *args, banner="listening on")


def trainer(*args: str) -> PeerProcess:
    """``hivemind-core train``: a status line every ``--status-interval`` seconds (see ``lines``)."""
    return PeerProcess("train", *args, banner="trainer ")


def peer(experts: str, *args: str) -> PeerProcess:
    """``hivemind-core peer``: hosts ``experts`` and trains through their grid."""
    return PeerProcess("peer", "--experts", experts, *args, banner="peer with ")
