"""DHT workload over real TCP (all peers in this process) or in simulation.

N peers each bootstrap from up to 3 earlier peers (``--join-concurrency`` at a time in
simulation, one at a time over TCP); K keys are stored from random peers, one operation at a
time, and each is read from another random peer; then 30% of the peers shut down and every key
is read again from a survivor. Final line: JSON with peers, setup_s, rpcs_per_join (DHT
requests a peer sent to join, counted as its join returns), store_success, get_success,
get_success_after_churn, store/get latency percentiles (virtual milliseconds in simulation),
mem_mb_per_peer, wall_s, and rpcs_per_s in simulation.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.net import TcpTransport
from hivemind_sim import AccessLink, Simulation, Topology
from hivemind_sim.swarms.dht_swarm import DHTSwarm

CHURN_FRACTION = 0.3


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return round(values[0], 3) if values else float("nan")
    return round(statistics.quantiles(values, n=100)[q - 1], 3)


async def workload(
    nodes: list[DHTNode],
    keys: int,
    rng: random.Random,
    clock: Callable[[], float],
    shut_down: Callable[[DHTNode], Awaitable[None]],
) -> dict[str, Any]:
    """Store, read, shut 30% down, read again; returns success rates and latencies (ms)."""
    store_ms, get_ms, after_ms = [], [], []
    stored = got = got_after = 0
    for i in range(keys):
        writer = rng.choice(nodes)
        started = clock()
        stored += await writer.store(f"key{i}", f"value{i}", writer.now() + 3600)
        store_ms.append((clock() - started) * 1000)
        reader = rng.choice([n for n in nodes if n is not writer])
        started = clock()
        found = await reader.get(f"key{i}")
        get_ms.append((clock() - started) * 1000)
        got += found is not None and found.value == f"value{i}"
    leaving = rng.sample(nodes, round(CHURN_FRACTION * len(nodes)))
    for node in leaving:
        await shut_down(node)
    survivors = [n for n in nodes if n not in leaving]
    for i in range(keys):
        reader = rng.choice(survivors)
        started = clock()
        found = await reader.get(f"key{i}")
        after_ms.append((clock() - started) * 1000)
        got_after += found is not None and found.value == f"value{i}"
    return {
        "store_success": stored / keys,
        "get_success": got / keys,
        "get_success_after_churn": got_after / keys,
        "store_ms_p50": percentile(store_ms, 50),
        "store_ms_p99": percentile(store_ms, 99),
        "get_ms_p50": percentile(get_ms, 50),
        "get_ms_p99": percentile(get_ms, 99),
        "get_after_churn_ms_p50": percentile(after_ms, 50),
        "get_after_churn_ms_p99": percentile(after_ms, 99),
        "survivors": len(survivors),
    }


async def run_tcp(peers: int, keys: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    config = DHTConfig(max_per_subnet=None)
    memory_before = rss_mb()
    started = time.perf_counter()
    nodes: list[DHTNode] = []
    join_rpcs = 0
    for _ in range(peers):
        initial = [n.endpoint for n in rng.sample(nodes, min(3, len(nodes)))]
        nodes.append(
            await DHTNode.create(
                TcpTransport(max_outgoing=8, idle_timeout=30), initial_peers=initial, config=config
            )
        )
        join_rpcs += nodes[-1].stats.rpcs
    setup = time.perf_counter() - started
    rpcs_per_join = join_rpcs / peers
    gc.collect()
    memory = rss_mb() - memory_before
    result = await workload(nodes, keys, rng, time.perf_counter, lambda node: node.shutdown())
    for node in nodes:
        await node.shutdown(handoff_timeout=0)  # the whole network goes: no one to hand records to
    return {
        "setup_s": round(setup, 3),
        "rpcs_per_join": round(rpcs_per_join, 2),
        "mem_mb_per_peer": round(memory / peers, 3),
        **result,
    }


def run_sim(peers: int, keys: int, seed: int, join_concurrency: int) -> dict[str, Any]:
    sim = Simulation(seed=seed, topology=Topology.world_regions())
    links = [
        AccessLink(uplink_bps=20e6, downlink_bps=100e6, latency=0.015),
        AccessLink(uplink_bps=1e9, downlink_bps=1e9, latency=0.003),
    ]
    swarm = DHTSwarm(sim, links=links)
    memory_before = rss_mb()

    async def main() -> dict[str, Any]:
        started = time.perf_counter()
        join_rpcs = 0
        for start in range(0, peers, join_concurrency):
            wave = await swarm.grow(min(join_concurrency, peers - start), concurrency=join_concurrency)
            join_rpcs += sum(node.stats.rpcs for node in wave)
        setup = time.perf_counter() - started
        rpcs_per_join = join_rpcs / peers
        gc.collect()
        memory = rss_mb() - memory_before
        address_of = {node.node_id: address for address, node in swarm.nodes.items()}
        result = await workload(
            swarm.live,
            keys,
            sim.random("workload"),
            sim.loop.time,
            lambda node: swarm.shut_down(address_of[node.node_id]),
        )
        await swarm.stop()
        return {
            "setup_s": round(setup, 3),
            "setup_virtual_s": round(sim.now, 3),
            "rpcs_per_join": round(rpcs_per_join, 2),
            "mem_mb_per_peer": round(memory / peers, 3),
            **result,
        }

    started = time.perf_counter()
    result = sim.run(main())
    wall = time.perf_counter() - started
    result["rpcs_per_s"] = round(sim.network.stats.delivered / 2 / wall)
    result["digest"] = sim.digest()
    sim.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["tcp", "sim"], default="sim")
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--join-concurrency", type=int, default=20, help="peers joining at once (simulation)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.transport == "tcp":
        result = asyncio.run(run_tcp(args.peers, args.keys, args.seed))
    else:
        result = run_sim(args.peers, args.keys, args.seed, args.join_concurrency)
    wall = round(time.perf_counter() - started, 3)
    print(
        json.dumps(
            {"transport": args.transport, "peers": args.peers, "keys": args.keys, **result, "wall_s": wall}
        )
    )


if __name__ == "__main__":
    main()
