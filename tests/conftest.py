"""Shared fixtures: every async test runs in the worlds it asks for, real TCP or simulated.

``pytest_asyncio_loop_factories`` makes each async test run once per world ("tcp": a real
asyncio loop on loopback; "sim": the virtual-time loop). A test limits itself to one world
with ``@pytest.mark.asyncio(loop_factories=["sim"])``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, Phase, settings

from hivemind_core.bridge import Bridge, LoopBridge
from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.moe.client import MoEClient
from hivemind_core.moe.server import ComputeExecutor, DeviceThread, ExpertBackend, ExpertServer
from hivemind_core.net import RPC, TcpConfig, TcpTransport, Transport
from hivemind_sim import AccessLink, SimTransport, Simulation
from hivemind_sim.swarms.baton import Baton
from hivemind_sim.swarms.compute import SimulatedDevice

# Property tests: a quick profile by default; HYPOTHESIS_PROFILE=thorough for a long hunt, and
# `deep` (`tox -e deep`) for 20x the default's examples and twice its steps per state machine.
# No `explain` phase: on Python < 3.12 it traces every line of every passing example
# (sys.settrace) to explain a failure that may never come, which made the state machines,
# whose examples run whole simulated swarms, several times slower.
QUICK_PHASES = tuple(phase for phase in Phase if phase is not Phase.explain)
# The default profile is derandomized: every run (CI's included) tries the same examples, so a
# red run is a change's doing and the suite's time does not depend on the draw. The hunt for new
# schedules is the `thorough` and `deep` profiles' job.
settings.register_profile(
    "default",
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=QUICK_PHASES,
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "deep",
    max_examples=500,
    stateful_step_count=100,
    deadline=None,
    phases=QUICK_PHASES,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Simulated peers get a realistic link so tests exercise latency and bandwidth, not zeros.
SIM_LINK = AccessLink(uplink_bps=1e9, downlink_bps=1e9, latency=0.001)


def _simulated_loop() -> asyncio.AbstractEventLoop:
    return Simulation(seed=0).loop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    return {"tcp": asyncio.new_event_loop, "sim": _simulated_loop}


class World:
    """Makes peers for the loop the test runs on, and closes them afterwards."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sim: Simulation | None = getattr(loop, "simulation", None)
        self.transports: list[Transport] = []
        self.dht_nodes: list[DHTNode] = []
        self.servers: list[ExpertServer] = []
        self.bridge: Bridge = Baton() if self.sim is not None else LoopBridge(loop)

    @property
    def kind(self) -> str:
        return "sim" if self.sim is not None else "tcp"

    def transport(self, **options: Any) -> Transport:
        if self.sim is not None:
            transport: Transport = self.sim.add_peer(f"peer{len(self.transports)}", link=SIM_LINK, **options)
        else:
            transport = TcpTransport(TcpConfig(host="127.0.0.1", **options))
        self.transports.append(transport)
        return transport

    async def rpc(self, methods: dict[str, Any] | None = None, *, serve: bool = True, **options: Any) -> RPC:
        rpc = RPC(self.transport(**options))
        for name, method in (methods or {}).items():
            rpc.register(name, method)
        if serve:
            await rpc.serve()
        return rpc

    async def dht(self, initial_peers: list[str] | tuple[str, ...] = (), **options: Any) -> DHTNode:
        """A DHT node on a new transport; simulated nodes get the virtual clock and a seeded rng."""
        transport = self.transport()
        if isinstance(transport, SimTransport):
            options.setdefault("clock", asyncio.get_running_loop().time)
            options.setdefault("rng", self.sim.random(f"dht/{transport.address}"))
        options.setdefault("config", DHTConfig(max_per_subnet=None))
        node = await DHTNode.create(transport, initial_peers=list(initial_peers), **options)
        self.dht_nodes.append(node)
        return node

    async def run_trainer(self, function: Any) -> Any:
        """Run synchronous torch code that calls remote experts through ``self.bridge``."""
        if isinstance(self.bridge, Baton):
            return await self.bridge.call(function)
        return await asyncio.get_running_loop().run_in_executor(None, function)

    def executor(self) -> ComputeExecutor:
        return SimulatedDevice() if self.sim is not None else DeviceThread()

    async def expert_server(
        self, backends: list[ExpertBackend], initial_peers: list[str] | tuple[str, ...] = (), **options: Any
    ) -> ExpertServer:
        """Experts served by a new peer (its DHT node's port), announced in the DHT."""
        node = await self.dht(initial_peers)
        server = ExpertServer(backends, rpc=node.rpc, dht=node, executor=self.executor(), **options)
        await server.start()
        self.servers.append(server)
        return server

    async def moe_client(self, initial_peers: list[str] | tuple[str, ...], **options: Any) -> MoEClient:
        node = await self.dht(initial_peers, client_mode=True)
        return MoEClient(rpc=node.rpc, dht=node, bridge=self.bridge, **options)

    async def close(self) -> None:
        for server in self.servers:
            await server.shutdown()
        for node in self.dht_nodes:
            await node.shutdown(handoff_timeout=0)
        for transport in self.transports:
            await transport.close(grace=0)


@pytest_asyncio.fixture
async def world() -> Any:
    world = World(asyncio.get_running_loop())
    yield world
    await world.close()
