"""Flash crowd: many peers join at the same moment through one initial peer, then each stores.

N joiners start together with the same single initial peer (the way a training run starts)
and each stores one key as soon as its own join is done (the initial peer stores one after);
then ``--readers`` random peers read every key (the readers at once, each one key at a time). A key is
*unreadable* when no reader finds it although its store returned True; ``failed_reads``
counts every (reader, acknowledged key) pair that missed. With ``--recheck`` the reads are repeated that many
seconds later (virtual seconds in simulation). RPC counts (``DHTStats.rpcs``): the requests a joiner
sent to join, and to join and store its key. Final line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.net import TcpConfig, TcpTransport
from hivemind_sim import AccessLink, Simulation, Topology
from hivemind_sim.swarms.dht_swarm import DHTSwarm

LINKS = [
    AccessLink(uplink_bps=20e6, downlink_bps=100e6, latency=0.015),
    AccessLink(uplink_bps=1e9, downlink_bps=1e9, latency=0.003),
]


async def join_and_store(create: Callable[[], Awaitable[DHTNode]], index: int) -> tuple[DHTNode, bool, int]:
    """Join, then store one key at once; returns the node, its store's outcome, its join's RPCs."""
    node = await create()
    join_rpcs = node.stats.rpcs
    return node, await node.store(f"crowd-key-{index}", index, node.now() + 3600), join_rpcs


async def read_back(
    nodes: list[DHTNode], acknowledged: list[bool], *, readers: int, rng: random.Random, recheck: float
) -> dict[str, Any]:
    """``readers`` nodes read every key; how many acknowledged keys they missed."""
    chosen = rng.sample(nodes, min(readers, len(nodes)))

    async def read_all() -> tuple[int, int]:
        """(keys acknowledged but unreadable by every reader, failed reads of acknowledged keys)."""
        keys = [f"crowd-key-{i}" for i in range(len(nodes))]

        async def read(reader: DHTNode) -> list[Any]:
            return [await reader.get(key) for key in keys]

        results = await asyncio.gather(*(read(reader) for reader in chosen))
        unreadable = failed = 0
        for i, ok in enumerate(acknowledged):
            if not ok:
                continue
            misses = sum(1 for found in results if found[i] is None or found[i].value != i)
            failed += misses
            unreadable += misses == len(chosen)
        return unreadable, failed

    progress(f"{sum(acknowledged)} of {len(nodes)} stores acknowledged; reading")
    unreadable, failed_reads = await read_all()
    result = {
        "acknowledged": sum(acknowledged),
        "unreadable": unreadable,
        "failed_reads": failed_reads,
        "reads": len(chosen) * sum(acknowledged),
    }
    if recheck > 0:
        await asyncio.sleep(recheck)
        result["unreadable_after_recheck"], result["failed_reads_after_recheck"] = await read_all()
    return result


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def join_costs(joined: list[tuple[DHTNode, bool, int]]) -> dict[str, Any]:
    """RPCs each joiner sent to join, and to join and store its key."""
    join = [rpcs for _, _, rpcs in joined]
    total = [node.stats.rpcs for node, _, _ in joined]
    return {
        "rpcs_per_join_mean": round(statistics.mean(join), 2),
        "rpcs_per_join_max": max(join),
        "rpcs_per_join_and_store_mean": round(statistics.mean(total), 2),
    }


async def run_tcp(joiners: int, *, readers: int, seed: int, recheck: float) -> dict[str, Any]:
    config = DHTConfig(max_per_subnet=None)
    started = time.perf_counter()

    def transport(index: int) -> TcpTransport:
        # one loopback address per peer, as on the internet: the transport counts and serves
        # incoming connections per remote host
        host = f"127.0.{index // 250}.{index % 250 + 1}"
        return TcpTransport(TcpConfig(host=host, max_outgoing=8, idle_timeout=30))

    def join(index: int) -> Awaitable[DHTNode]:
        return DHTNode.create(transport(index), initial_peers=[first.endpoint], config=config)

    first = await DHTNode.create(transport(0), config=config)
    joined = await asyncio.gather(*(join_and_store(lambda i=i: join(i), i) for i in range(1, joiners + 1)))
    setup = time.perf_counter() - started
    stored_first = await first.store("crowd-key-0", 0, first.now() + 3600)
    nodes = [first, *(node for node, _, _ in joined)]
    acknowledged = [stored_first, *(ok for _, ok, _ in joined)]
    costs = join_costs(joined)
    try:
        result = await read_back(
            nodes, acknowledged, readers=readers, rng=random.Random(seed), recheck=recheck
        )
    finally:
        for node in nodes:
            await node.shutdown(handoff_timeout=0)
    return {"setup_s": round(setup, 3), **costs, **result}


def run_sim(joiners: int, *, readers: int, seed: int, recheck: float) -> dict[str, Any]:
    sim = Simulation(seed=seed, topology=Topology.world_regions(), jitter=0.05)
    swarm = DHTSwarm(sim, links=LINKS)

    async def main() -> dict[str, Any]:
        first = await swarm.add_peer()
        joined = await asyncio.gather(
            *(join_and_store(lambda: swarm.add_peer([first.endpoint]), i + 1) for i in range(joiners))
        )
        setup_virtual = sim.now
        stored_first = await first.store("crowd-key-0", 0, first.now() + 3600)
        nodes = [first, *(node for node, _, _ in joined)]
        acknowledged = [stored_first, *(ok for _, ok, _ in joined)]
        costs = join_costs(joined)
        result = await read_back(
            nodes, acknowledged, readers=readers, rng=sim.random("flash-crowd"), recheck=recheck
        )
        await swarm.stop()
        return {"setup_virtual_s": round(setup_virtual, 3), **costs, **result}

    result = sim.run(main())
    result["digest"] = sim.digest()
    sim.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["tcp", "sim"], default="sim")
    parser.add_argument("--joiners", type=int, default=300)
    parser.add_argument("--readers", type=int, default=10)
    parser.add_argument("--recheck", type=float, default=0.0, help="read again after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    options = {"readers": args.readers, "seed": args.seed, "recheck": args.recheck}
    if args.transport == "tcp":
        result = asyncio.run(run_tcp(args.joiners, **options))
    else:
        result = run_sim(args.joiners, **options)
    print(
        json.dumps(
            {
                "transport": args.transport,
                "joiners": args.joiners,
                "seed": args.seed,
                **result,
                "wall_s": round(time.perf_counter() - started, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
