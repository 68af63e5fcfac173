"""A swarm of simulated DHT peers, with an oracle that knows who is really alive.

Used by tests, benchmarks and scenarios: it grows the swarm (each peer bootstrapping from up to
three live peers), crashes or shuts peers down, brings them back with their old identity, and
answers "which live nodes are truly nearest to this id?" to judge lookups.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from hivemind_core.dht import BootstrapError, DHTConfig, DHTNode, Identity

from ..world.network import AccessLink
from ..world.simulation import Simulation
from .churn import ChurnModel, start_churn

logger = logging.getLogger(__name__)


class SwarmHooks(Protocol):
    """What runs on top of a swarm's DHT nodes (expert servers, trainers) follows their lives."""

    async def started(self, address: str, node: DHTNode) -> None:
        """``node`` just joined (or rejoined) as ``address``."""

    async def stopping(self, address: str, *, crashed: bool) -> None:
        """``address`` is about to stop: crashed (no goodbye) or leaving gracefully."""


PeerError = Callable[[str, str, Exception], None]
"""Called with (address, what it was doing, the exception) when a peer's background work fails."""


def _log_error(address: str, what: str, error: Exception) -> None:
    logger.error("%s: %s failed", address, what, exc_info=error)


class DHTSwarm:
    """DHT peers in one simulation; ``nodes`` holds the live ones by address.

    Leaves, rejoins and restarts run in the background; an exception one of them raises is that
    peer's failure, handed to ``on_error`` (by default logged), and never stops the others.
    """

    def __init__(
        self,
        sim: Simulation,
        *,
        config: DHTConfig | None = None,
        links: Sequence[AccessLink] = (AccessLink(latency=0.005),),
        clock_skew: float = 0.0,
        initial_peers: int = 3,
    ) -> None:
        self.sim = sim
        self.config = config or DHTConfig(max_per_subnet=None)
        self.links = list(links)
        self.clock_skew = clock_skew
        self.initial_peers = initial_peers
        self.nodes: dict[str, DHTNode] = {}
        self._reachable: list[str] = []  # live peers that take requests, in the order of ``nodes``
        self.identities: dict[str, Identity] = {}
        self.departed: set[str] = set()  # peers that churn took down and has not brought back yet
        self.client_mode: set[str] = set()  # peers that accept no incoming requests
        self.hooks: SwarmHooks | None = None
        self.on_error: PeerError = _log_error
        self._rng = sim.random("swarm")
        self._placement: dict[str, tuple[object, AccessLink]] = {}
        self._skew: dict[str, float] = {}
        self._starting: dict[str, asyncio.Task[DHTNode]] = {}
        self._leaving: dict[str, asyncio.Task[None]] = {}
        self._background: dict[asyncio.Task[None], None] = {}  # ordered: stop() cancels deterministically

    @property
    def live(self) -> list[DHTNode]:
        return list(self.nodes.values())

    async def grow(self, count: int, *, concurrency: int = 1) -> list[DHTNode]:
        """Add ``count`` peers, ``concurrency`` of them joining at a time."""
        added: list[DHTNode] = []
        for start in range(0, count, concurrency):
            wave = min(concurrency, count - start)
            added += await asyncio.gather(*(self.add_peer() for _ in range(wave)))
        return added

    async def add_peer(
        self,
        initial: Sequence[str] | None = None,
        *,
        address: str | None = None,
        region: object | None = None,
        link: AccessLink | None = None,
        client_mode: bool = False,
    ) -> DHTNode:
        """Place a new peer (at ``region`` with ``link``, or drawn at random) and start it.

        ``initial``: the peers it joins through (default: up to ``initial_peers`` live ones).
        A ``client_mode`` peer accepts no incoming requests (a peer behind NAT).
        """
        address = address or f"dht{len(self._placement):05d}"
        if address in self._placement:
            raise ValueError(f"peer {address!r} exists already")
        regions = self.sim.network.topology.nodes
        region = self._rng.choice(regions) if region is None else region
        self._placement[address] = (region, link or self._rng.choice(self.links))
        self._skew[address] = self._rng.uniform(-self.clock_skew, self.clock_skew)
        self.identities[address] = Identity.generate(self.sim.random(f"identity/{address}"))
        if client_mode:
            self.client_mode.add(address)
        node_name, link = self._placement[address]
        transport = self.sim.add_peer(address, node=node_name, link=link)
        return await self._start(address, transport, initial)

    async def crash(self, address: str) -> None:
        """The peer's machine dies: no goodbye; its tasks stop. A graceful leave in progress is cut
        short (its hand-off dies with the machine)."""
        node = self._pop_node(address)
        leaving = self._leaving.get(address)
        if node is None and leaving is None:
            raise KeyError(f"peer {address!r} is not up")
        self.sim.network.crash(address)  # fails the hand-off's requests at once
        if node is not None:
            try:
                if self.hooks is not None:
                    await self.hooks.stopping(address, crashed=True)
            finally:  # a dead machine says no goodbye
                await self._stop_node(address, node.shutdown(handoff_timeout=0))
        else:
            await asyncio.wait([leaving])

    async def shut_down(self, address: str) -> None:
        """The peer leaves gracefully: it hands its records on, then its connections close."""
        node = self._pop_node(address)
        if node is None:
            raise KeyError(address)
        try:
            if self.hooks is not None:
                await self.hooks.stopping(address, crashed=False)
        finally:  # whatever runs on top of it, the node itself leaves
            await self._stop_node(address, node.shutdown())

    async def rejoin(self, address: str) -> DHTNode:
        """A departed peer comes back with its identity but empty storage.

        A peer still leaving (handing its records on) holds its address: the new process waits
        for the old one to let go of it, as a restarted server waits for its port.
        """
        leaving = self._leaving.get(address)
        if leaving is not None:
            await asyncio.wait([leaving])  # not gather: a cancelled rejoin must not cancel the leave
        return await self._start(address, self.sim.restart(address), None)

    def churn(self, model: ChurnModel, *, until: float) -> None:
        """Make every current peer leave and come back according to ``model`` until ``until``."""
        start_churn(self.sim, list(self.nodes), model, leave=self.depart, join=self.come_back, until=until)

    def depart(self, address: str, graceful: bool) -> None:
        """Start taking ``address`` down (a graceful leave or a crash) in the background."""
        self.departed.add(address)
        self._spawn(address, "leaving" if graceful else "crashing", self._leave(address, graceful))

    def come_back(self, address: str) -> None:
        """Start bringing a departed ``address`` back in the background."""
        self.departed.discard(address)
        self._spawn(address, "rejoining", self._join(address))

    def restart(self, address: str) -> None:
        """Start crashing ``address`` and bringing it back at once (its state is lost)."""
        self._spawn(address, "restarting", self._restart(address))

    async def settle(self) -> None:
        """Wait until every leave and rejoin that churn has started so far is over."""
        while self._background:
            await asyncio.wait(list(self._background))

    async def stop(self) -> None:
        """End churn work in progress and shut every live peer down."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for address in list(self.nodes):
            node = self._pop_node(address)
            assert node is not None
            try:
                if self.hooks is not None:
                    await self.hooks.stopping(address, crashed=False)
            except Exception as error:
                self.on_error(address, "stopping", error)
            await node.shutdown(handoff_timeout=0)  # the whole world ends

    def nearest_live(self, target: int, k: int, *, exclude: int | None = None) -> list[int]:
        """The oracle: ids of the ``k`` live nodes truly nearest to ``target`` that a lookup can
        find (a client-mode peer takes no requests, so no routing table holds it)."""
        ids = (
            node.node_id
            for address, node in self.nodes.items()
            if node.node_id != exclude and address not in self.client_mode
        )
        return heapq.nsmallest(k, ids, key=lambda node_id: node_id ^ target)

    def _spawn(self, address: str, what: str, work: Coroutine[Any, Any, None]) -> None:
        task = self.sim.loop.create_task(self._guarded(address, what, work))
        self._background[task] = None
        task.add_done_callback(self._background.pop)

    async def _guarded(self, address: str, what: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as error:  # one peer's failure, not the swarm's
            self.on_error(address, what, error)

    async def _restart(self, address: str) -> None:
        if address in self.nodes:
            await self.crash(address)
        await self._join(address)

    async def _leave(self, address: str, graceful: bool) -> None:
        starting = self._starting.get(address)
        if starting is not None:  # still rejoining: let it finish, then leave
            await asyncio.gather(starting, return_exceptions=True)
        if address in self.nodes:
            await (self.shut_down(address) if graceful else self.crash(address))

    async def _join(self, address: str) -> None:
        if address in self.nodes or address in self._starting:
            return
        task = self.sim.loop.create_task(self.rejoin(address))
        self._starting[address] = task
        try:
            await task
        except BootstrapError:
            pass  # nobody it knew was up: it stays down until its next session
        finally:
            del self._starting[address]

    async def _stop_node(self, address: str, shutdown: Coroutine[Any, Any, None]) -> None:
        """Run a node's ``shutdown`` as a task of its own, which a rejoin or a crash can wait for."""
        leaving = self.sim.loop.create_task(shutdown)
        self._leaving[address] = leaving
        try:
            await leaving
        finally:
            if self._leaving.get(address) is leaving:
                del self._leaving[address]

    async def _start(self, address: str, transport, initial: Sequence[str] | None) -> DHTNode:
        if initial is None:
            # in simulation a peer's address is its endpoint; client-mode peers take no requests
            live = self._reachable  # not rebuilt per join: 100,000 joins made that quadratic
            initial = self._rng.sample(live, min(self.initial_peers, len(live)))
        loop = self.sim.loop
        skew = self._skew[address]
        node = await DHTNode.create(
            transport,
            initial_peers=initial,
            identity=self.identities[address],
            config=self.config,
            clock=(lambda: loop.time() + skew) if skew else loop.time,
            rng=self.sim.random(f"dht/{address}/{loop.time()!r}"),
            client_mode=address in self.client_mode,
        )
        self.nodes[address] = node
        if address not in self.client_mode:
            self._reachable.append(address)
        if self.hooks is not None:
            await self.hooks.started(address, node)
        return node

    def _pop_node(self, address: str) -> DHTNode | None:
        node = self.nodes.pop(address, None)
        if node is not None and address not in self.client_mode:
            self._reachable.remove(address)
        return node
