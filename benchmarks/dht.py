"""DHT workload over real TCP (all peers in this process) or in simulation.

N peers each bootstrap from up to 3 earlier peers (``--join-concurrency`` at a time in
simulation, one at a time over TCP); K keys are stored from random peers, one operation at a
time, and each is read from another random peer; then 30% of the peers (``--churn-fraction``)
shut down and every key is read again from a survivor. Final line: JSON with peers, setup_s,
rpcs_per_join (DHT requests a peer sent to join, counted as its join returns), store_success,
get_success, get_success_after_churn, store/get latency percentiles (virtual milliseconds in
simulation), store/get CPU time per operation in microseconds (every peer runs in this
process, so it covers both ends of every RPC; unlike latency it hardly moves when other
processes load the machine), mem_mb_per_peer, wall_s, and rpcs_per_s in simulation.

Over TCP each peer keeps at most ``--max-outgoing`` outgoing connections, by default its share
of the process's file descriptors (:func:`outgoing_pool`): 64 peers keep every connection they
use, as peers with a process each would; 1000 peers keep 7 each and keep reconnecting.

With ``--kademlia-python`` (a Python that has ``kademlia==2.2.3``), the same TCP workload is
then run on kademlia by ``kademlia_reference.py`` in a subprocess, and its figures appear under
``kademlia`` in the final line, with ``get_p50_vs_kademlia`` (ours / theirs): the comparison
side by side in one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.net import TcpConfig, TcpTransport
from hivemind_sim import AccessLink, Simulation, Topology
from hivemind_sim.swarms.dht_swarm import DHTSwarm

REFERENCE = Path(__file__).with_name("kademlia_reference.py")


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
    churn_fraction: float,
) -> dict[str, Any]:
    """Store, read, shut ``churn_fraction`` down, read again; success rates, latencies (ms), CPU."""
    store_ms, get_ms, after_ms = [], [], []
    store_cpu = get_cpu = 0.0
    stored = got = got_after = 0
    for i in range(keys):
        writer = rng.choice(nodes)
        started, cpu = clock(), time.process_time()
        stored += await writer.store(f"key{i}", f"value{i}", writer.now() + 3600)
        store_ms.append((clock() - started) * 1000)
        store_cpu += time.process_time() - cpu
        reader = rng.choice([n for n in nodes if n is not writer])
        started, cpu = clock(), time.process_time()
        found = await reader.get(f"key{i}")
        get_ms.append((clock() - started) * 1000)
        get_cpu += time.process_time() - cpu
        got += found is not None and found.value == f"value{i}"
    leaving = rng.sample(nodes, round(churn_fraction * len(nodes)))
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
        "store_cpu_us": round(store_cpu / keys * 1e6),
        "get_cpu_us": round(get_cpu / keys * 1e6),
        "survivors": len(survivors),
    }


def outgoing_pool(peers: int) -> int:
    """Outgoing connections each peer may keep: its share of this process's file descriptors,
    as a real peer has a process to itself (a connection takes one here at each end; a quarter
    is left spare), at most the transport's default. 64 peers keep all they need; 1000 keep 7."""
    soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, min(TcpConfig().max_outgoing, soft_limit * 3 // 4 // (2 * peers)))


async def run_tcp(
    peers: int, keys: int, seed: int, churn_fraction: float, max_outgoing: int
) -> dict[str, Any]:
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
                TcpTransport(TcpConfig(max_outgoing=max_outgoing, idle_timeout=30)),
                initial_peers=initial,
                config=config,
            )
        )
        join_rpcs += nodes[-1].stats.rpcs
    setup = time.perf_counter() - started
    rpcs_per_join = join_rpcs / peers
    gc.collect()
    memory = rss_mb() - memory_before
    result = await workload(nodes, keys, rng, time.perf_counter, lambda node: node.shutdown(), churn_fraction)
    for node in nodes:
        await node.shutdown(handoff_timeout=0)  # the whole network goes: no one to hand records to
    return {
        "max_outgoing": max_outgoing,
        "setup_s": round(setup, 3),
        "rpcs_per_join": round(rpcs_per_join, 2),
        "mem_mb_per_peer": round(memory / peers, 3),
        **result,
    }


def run_sim(peers: int, keys: int, seed: int, join_concurrency: int, churn_fraction: float) -> dict[str, Any]:
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
            churn_fraction,
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


def run_kademlia(python: str, peers: int, keys: int, seed: int, churn_fraction: float) -> dict[str, Any]:
    """The reference's figures for the same workload, from its final JSON line."""
    command = [python, str(REFERENCE), "--peers", str(peers), "--keys", str(keys), "--seed", str(seed)]
    command += ["--churn-fraction", str(churn_fraction)]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["tcp", "sim"], default="sim")
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--churn-fraction", type=float, default=0.3, help="peers leaving before the last reads"
    )
    parser.add_argument("--join-concurrency", type=int, default=20, help="peers joining at once (simulation)")
    parser.add_argument(
        "--max-outgoing",
        type=int,
        help="outgoing connections per peer over TCP (default: its share of the fd limit, see outgoing_pool)",
    )
    parser.add_argument(
        "--kademlia-python",
        metavar="PYTHON",
        help="a Python with kademlia==2.2.3: run the same workload on it too (TCP only)",
    )
    args = parser.parse_args()
    if args.kademlia_python and args.transport != "tcp":
        parser.error("--kademlia-python compares the TCP workload: use it with --transport tcp")
    started = time.perf_counter()
    if args.transport == "tcp":
        result = asyncio.run(
            run_tcp(
                args.peers,
                args.keys,
                args.seed,
                args.churn_fraction,
                args.max_outgoing or outgoing_pool(args.peers),
            )
        )
    else:
        result = run_sim(args.peers, args.keys, args.seed, args.join_concurrency, args.churn_fraction)
    summary = {"transport": args.transport, "peers": args.peers, "keys": args.keys, **result}
    summary["wall_s"] = round(time.perf_counter() - started, 3)
    if args.kademlia_python:
        reference = run_kademlia(args.kademlia_python, args.peers, args.keys, args.seed, args.churn_fraction)
        summary["kademlia"] = reference
        summary["get_p50_vs_kademlia"] = round(result["get_ms_p50"] / reference["get_ms_p50"], 3)
        summary["store_p50_vs_kademlia"] = round(result["store_ms_p50"] / reference["store_ms_p50"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
