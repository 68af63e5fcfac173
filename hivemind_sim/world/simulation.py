"""Simulation: one virtual-time world holding a clock, a network and its peers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

import simpy

from hivemind_core.net.frames import DEFAULT_MAX_FRAME_SIZE
from hivemind_core.world import WORLD_ATTRIBUTE

from .collector import tuned_collector
from .loop import VirtualTimeLoop
from .network import AccessLink, SimNetwork
from .tcp_model import TcpOptions
from .topology import Node, Topology
from .trace import TraceDigest
from .transport import SimTransport

T = TypeVar("T")


class Simulation:
    """A deterministic world: same seed and same code give the same trace digest."""

    def __init__(
        self,
        *,
        seed: int = 0,
        topology: Topology | None = None,
        jitter: float = 0.0,
        loss: float = 0.0,
        tcp: TcpOptions | None = None,
    ) -> None:
        self.seed = seed
        self.env = simpy.Environment()
        self.loop = VirtualTimeLoop(self.env)
        self.loop.simulation = self
        setattr(self.loop, WORLD_ATTRIBUTE, self)  # core code's default clock and random streams
        self._streams: dict[str, int] = {}
        self.trace = TraceDigest()
        self.network = SimNetwork(
            self.env,
            topology or Topology.single(),
            rng=self.random("network"),
            trace=self.trace,
            jitter=jitter,
            loss=loss,
            tcp=tcp,
        )

    @property
    def now(self) -> float:
        return self.env.now

    def random(self, stream: str) -> random.Random:
        """An independent, reproducible random stream derived from the seed and a name."""
        return random.Random(f"{self.seed}/{stream}")

    # ---- hivemind_core.world.World: what core code gets when it is not handed a clock or rng

    def clock(self) -> float:
        return self.env.now

    def rng(self, purpose: str) -> random.Random:
        """A fresh stream per call: the n-th stream asked for ``purpose`` is always the same."""
        index = self._streams[purpose] = self._streams.get(purpose, -1) + 1
        return self.random(f"default/{purpose}/{index}")

    def add_peer(
        self,
        address: str,
        *,
        node: Node | None = None,
        link: AccessLink | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> SimTransport:
        """Place a machine on the network and return its (not yet listening) transport."""
        self.network.add_peer(address, node=node, link=link)
        return SimTransport(self.network, address, max_frame_size=max_frame_size)

    def restart(self, address: str, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> SimTransport:
        """A fresh transport for a peer that crashed or closed."""
        return SimTransport(self.network, address, max_frame_size=max_frame_size)

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Run ``main`` to completion in virtual time and return its result (with the garbage
        collector tuned for a heap of long-lived objects: see ``collector.py``)."""
        with tuned_collector():
            return self.loop.run_until_complete(main)

    def digest(self) -> str:
        return self.trace.hexdigest()

    def close(self) -> None:
        """Cancel whatever is still running and close the loop."""
        if self.loop.is_closed():
            return
        tasks = self.loop.unfinished_tasks()  # in creation order: the same on every run
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
