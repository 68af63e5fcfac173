"""The reference for ``benchmarks/dht.py --transport tcp``: the same workload on kademlia 2.2.3.

Run it with a Python that has ``kademlia==2.2.3`` installed (it must not import hivemind_core,
so the two never share an interpreter), e.g.::

    python3 -m venv /tmp/kadvenv && /tmp/kadvenv/bin/pip install kademlia==2.2.3
    /tmp/kadvenv/bin/python benchmarks/kademlia_reference.py --peers 64

N ``kademlia.network.Server`` peers listen on 127.0.0.1 (UDP: kademlia has no TCP transport)
and each bootstraps from up to 3 earlier peers, one at a time; K keys are set from random
peers, one operation at a time, each read from another random peer; then 30% of the peers
(``--churn-fraction``) stop and every key is read again from a survivor. Final line: JSON with
the same fields as ``dht.py`` (latencies in milliseconds, CPU per operation in microseconds),
plus ``kademlia_version``. Kademlia keeps asking peers that left, each for its 5 s UDP timeout,
so the phase after churn takes minutes of mostly idle waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import random
import statistics
import time
from typing import Any

from kademlia.network import Server


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return round(values[0], 3) if values else float("nan")
    return round(statistics.quantiles(values, n=100)[q - 1], 3)


async def start_peer(known: list[tuple[str, int]]) -> tuple[Server, tuple[str, int]]:
    """A listening server bootstrapped from ``known``; returns it and its address."""
    server = Server()
    await server.listen(0, interface="127.0.0.1")
    address = server.transport.get_extra_info("sockname")[:2]
    if known:
        await server.bootstrap(known)
    return server, address


async def run(peers: int, keys: int, seed: int, churn_fraction: float) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.perf_counter()
    servers: list[Server] = []
    addresses: list[tuple[str, int]] = []
    for _ in range(peers):
        initial = rng.sample(addresses, min(3, len(addresses)))
        server, address = await start_peer(initial)
        servers.append(server)
        addresses.append(address)
    setup = time.perf_counter() - started
    store_ms, get_ms, after_ms = [], [], []
    store_cpu = get_cpu = 0.0
    stored = got = got_after = 0
    for i in range(keys):
        writer = rng.choice(servers)
        started, cpu = time.perf_counter(), time.process_time()
        stored += bool(await writer.set(f"key{i}", f"value{i}"))
        store_ms.append((time.perf_counter() - started) * 1000)
        store_cpu += time.process_time() - cpu
        reader = rng.choice([s for s in servers if s is not writer])
        started, cpu = time.perf_counter(), time.process_time()
        found = await reader.get(f"key{i}")
        get_ms.append((time.perf_counter() - started) * 1000)
        get_cpu += time.process_time() - cpu
        got += found == f"value{i}"
    leaving = rng.sample(servers, round(churn_fraction * len(servers)))
    for server in leaving:
        server.stop()
    survivors = [s for s in servers if s not in leaving]
    for i in range(keys):
        reader = rng.choice(survivors)
        started = time.perf_counter()
        found = await reader.get(f"key{i}")
        after_ms.append((time.perf_counter() - started) * 1000)
        got_after += found == f"value{i}"
    for server in survivors:
        server.stop()
    return {
        "setup_s": round(setup, 3),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=64)
    parser.add_argument("--keys", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--churn-fraction", type=float, default=0.3, help="peers stopping before last reads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # kademlia logs every lookup at INFO
    started = time.perf_counter()
    result = asyncio.run(run(args.peers, args.keys, args.seed, args.churn_fraction))
    wall = round(time.perf_counter() - started, 3)
    summary = {
        "implementation": "kademlia",
        "kademlia_version": importlib.metadata.version("kademlia"),
        "transport": "udp",
        "peers": args.peers,
        "keys": args.keys,
        **result,
        "wall_s": wall,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
