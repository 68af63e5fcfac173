"""Joining: a crowd that joins at once through one initial peer forms one consistent network.

The failure these tests guard against: peers joining together through one initial peer learned
only their own neighbourhood, so a lookup for a far key converged among the nearest nodes the
*searcher* knew, half the id space away from the real ones, and a store that returned True
left its value where other peers' lookups never go (7 of 61 keys over TCP, 21 of 301 in
simulation).
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.dht.maintenance import Maintenance
from hivemind_core.dht.routing import Contact, RoutingTable
from hivemind_core.dht.storage import DHTRecord, LocalStorage
from hivemind_core.net import TcpConfig, TcpTransport
from hivemind_sim import AccessLink, Simulation, Topology
from hivemind_sim.swarms.dht_swarm import DHTSwarm

LINKS = [
    AccessLink(uplink_bps=20e6, downlink_bps=100e6, latency=0.015),  # home
    AccessLink(uplink_bps=1e9, downlink_bps=1e9, latency=0.003),  # campus
]


async def crowd_stores_and_reads(
    first: DHTNode, join: Callable[[], Awaitable[DHTNode]], joiners: int, readers: list[int] | None
) -> tuple[list[DHTNode], list[str], list[int]]:
    """``joiners`` peers join at once through ``first``, each storing a key as soon as it joined.

    Returns the peers, the keys whose store returned True, and how many of those keys each
    reader (every peer if ``readers`` is None, else those indices) failed to read.
    """

    async def join_and_store(index: int) -> tuple[DHTNode, bool]:
        node = await join()
        return node, await node.store(f"crowd-{index}", index, node.now() + 3600)

    joined = await asyncio.gather(*(join_and_store(i) for i in range(joiners)))
    nodes = [first, *(node for node, _ in joined)]
    acknowledged = [f"crowd-{i}" for i, (_, ok) in enumerate(joined) if ok]
    chosen = nodes if readers is None else [nodes[i] for i in readers]

    async def misses(reader: DHTNode) -> int:
        return sum([await reader.get(key) is None for key in acknowledged])  # one key at a time

    return nodes, acknowledged, list(await asyncio.gather(*(misses(reader) for reader in chosen)))


def simulated_crowd(joiners: int, *, seed: int, readers: int | None) -> tuple[int, list[int], float]:
    """(acknowledged stores, misses per reader, mean RPCs per join) for a crowd in simulation."""
    with Simulation(seed=seed, topology=Topology.world_regions(), jitter=0.05) as sim:
        swarm = DHTSwarm(sim, links=LINKS)

        async def main() -> tuple[int, list[int], float]:
            first = await swarm.add_peer()
            join_rpcs: list[int] = []

            async def join() -> DHTNode:
                node = await swarm.add_peer([first.endpoint])
                join_rpcs.append(node.stats.rpcs)
                return node

            chosen = None if readers is None else sim.random("readers").sample(range(joiners + 1), readers)
            _, acknowledged, misses = await crowd_stores_and_reads(first, join, joiners, chosen)
            await swarm.stop()
            return len(acknowledged), misses, statistics.mean(join_rpcs)

        return sim.run(main())


@pytest.mark.parametrize("seed", [2, pytest.param(0, marks=pytest.mark.slow)])
def test_a_simulated_flash_crowd_reads_every_acknowledged_store(seed: int) -> None:
    """150 peers join at once through one initial peer; each stores right after joining; ten
    peers read every acknowledged key. Before lookups toward distances a node never met asked
    its introducer too, and holders handed records to newcomers, each reader missed 5 keys."""
    acknowledged, misses, join_rpcs = simulated_crowd(150, seed=seed, readers=10)
    assert acknowledged == 150
    assert misses == [0] * 10
    # one lookup and a store: ~27 RPCs, ~31 since lookups ask the rest of the k nearest at once
    # (Kademlia's final round); a lookup per bucket would be over a hundred
    assert join_rpcs < 34, f"a join should cost one lookup, not one per bucket: {join_rpcs:.1f} RPCs"


@pytest.mark.slow
def test_three_hundred_simulated_joiners_read_every_acknowledged_store() -> None:
    acknowledged, misses, join_rpcs = simulated_crowd(300, seed=1, readers=50)
    assert acknowledged == 300
    assert sum(misses) == 0, f"{sum(misses)} failed reads"
    print(f"300 joiners: {join_rpcs:.1f} RPCs per join")


async def tcp_crowd(joiners: int, readers: int | None, *, within: float = 90.0) -> tuple[int, list[int]]:
    """A crowd over TCP in this process, each peer on its own loopback address (the transport
    serves and caps incoming connections per remote host, as on the internet).

    Every peer shares this one event loop (on two busy cores, a fraction of one), so the real-time
    deadlines are stretched: a lagging loop must not pass for a lossy network, since what is tested
    is where lookups converge, not how fast. ``within`` bounds the crowd inside the loop, so that
    on expiry the transports still close (a pytest-timeout cut stops the loop where it stands and
    leaves their sockets open)."""
    config = DHTConfig(max_per_subnet=None, rpc_timeout=30, lookup_timeout=120, bootstrap_timeout=60)
    transports: list[TcpTransport] = []

    def transport() -> TcpTransport:
        index = len(transports) + 1
        host = f"127.0.{index // 250}.{index % 250 + 1}"
        # few fds per peer
        transports.append(
            TcpTransport(TcpConfig(host=host, max_outgoing=8, idle_timeout=30, transfer_timeout=60))
        )
        return transports[-1]

    nodes: list[DHTNode] = []
    try:
        async with asyncio.timeout(within):
            first = await DHTNode.create(transport(), config=config)
            nodes.append(first)

            async def join() -> DHTNode:
                node = await DHTNode.create(transport(), initial_peers=[first.endpoint], config=config)
                nodes.append(node)
                return node

            chosen = None if readers is None else random.Random(0).sample(range(joiners + 1), readers)
            _, acknowledged, misses = await crowd_stores_and_reads(first, join, joiners, chosen)
            return len(acknowledged), misses
    finally:
        for node in nodes:
            await node.shutdown(handoff_timeout=0)
        for each in transports:
            await each.close(grace=0)


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_a_tcp_flash_crowd_reads_every_acknowledged_store() -> None:
    """60 peers join at once over TCP (before, each reader missed 7 to 9 of the 60 keys)."""
    acknowledged, misses = await tcp_crowd(60, readers=10)
    assert acknowledged == 60
    assert misses == [0] * 10


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~100 s on two cores that other work keeps busy
@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_three_hundred_tcp_joiners_read_every_acknowledged_store() -> None:
    """Ten readers, each reading all 300 keys one at a time, prove each acknowledged store
    readable (30 readers took three times as long and proved no more)."""
    acknowledged, misses = await tcp_crowd(300, readers=10, within=480)
    assert acknowledged == 300
    assert sum(misses) == 0, f"{sum(misses)} failed reads"


# ---- hand-over: a holder gives a newcomer the records it should now hold --------------------


def contact(node_id: int) -> Contact:
    return Contact(node_id, f"127.0.0.1:{node_id % 60000 + 1}", b"")


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_a_newcomer_nearer_than_us_receives_what_it_should_hold() -> None:
    me = 1 << 100
    table = RoutingTable(me, k=20, max_per_subnet=None)
    for i in range(1, 11):
        table.add(contact(me + (i << 80)), now=0.0)
    storage = LocalStorage()
    near_key, far_key = me + 5, me ^ (1 << 150)  # ids of keys near us and far away
    for target in (near_key, far_key):
        storage.store(target, DHTRecord(b"k%d" % target, None, b"v", 100.0), now=0.0)
    handed: dict[int, list[DHTRecord]] = {}
    done = asyncio.Event()

    async def store_all(to: Contact, records: Any) -> list[bool]:
        handed[to.node_id] = list(records)
        done.set()
        return [True] * len(records)

    loop = asyncio.get_running_loop()
    maintenance = Maintenance(
        config=DHTConfig(replicas=5),
        storage=storage,
        cache=LocalStorage(),
        routing_table=table,
        lookup=None,  # type: ignore[arg-type]  # not used by a hand-over
        store_all=store_all,
        clock=lambda: 0.0,
        rng=random.Random(0),
        spawn=lambda coroutine: loop.create_task(coroutine),  # type: ignore[func-returns-value]
    )
    newcomer, farther = contact(near_key ^ 1), contact(me + (3 << 80))
    for each in (newcomer, farther):
        table.add(each, now=0.0)
        maintenance.newcomer(each)
    await asyncio.wait_for(done.wait(), timeout=10)
    assert list(handed) == [newcomer.node_id], "only the node nearer than us to a key we hold"
    assert [record.key for record in handed[newcomer.node_id]] == [b"k%d" % near_key]


def test_records_stored_before_a_crowd_joins_reach_the_newcomers_nearest_to_them() -> None:
    """The only holder of some records meets a crowd of newcomers nearer to them: it must hand
    them over even though it meets several nearer newcomers at once (handing over only when we
    are nearer than every other contact we know, as the Kademlia paper suggests, assumes those
    others hold the record already: here 13% of reads failed for minutes)."""
    with Simulation(seed=5, topology=Topology.world_regions(), jitter=0.05) as sim:
        swarm = DHTSwarm(sim, links=LINKS)

        async def main() -> list[int]:
            first = await swarm.add_peer()
            keys = [f"early-{i}" for i in range(30)]
            for key in keys:
                assert await first.store(key, key, first.now() + 3600)
            crowd = await asyncio.gather(*(swarm.add_peer([first.endpoint]) for _ in range(100)))
            readers = sim.random("readers").sample(crowd, 10)
            found = await asyncio.gather(*(reader.get_many(keys) for reader in readers))
            await swarm.stop()
            return [sum(1 for value in values if value is None) for values in found]

        assert sim.run(main()) == [0] * 10
