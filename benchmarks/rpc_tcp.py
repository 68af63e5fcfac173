"""RPC over real TCP on loopback: echo calls to a server running in its own process.

For each payload size, a client keeps ``--concurrency`` calls in flight until ``--requests``
calls are done (or ``--max-seconds`` pass) and reports throughput and latency. Then the round
trip of one small call at a time (``ROUND_TRIP_BODY`` bytes, as a DHT RPC): to the server
process, and with client and server on this process's loop, as every peer of
``benchmarks/dht.py`` is, where CPU time per call covers both ends (unlike latency it hardly
moves when other processes load the machine). Final line: JSON with rpcs_per_s, p50_ms and
p99_ms per payload, and ``round_trip`` (p50_us, p99_us; cpu_us per call in process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from hivemind_core.net import RPC, TcpTransport
from hivemind_sim.swarms.processes import rpc_peer

PAYLOADS = {"1KiB": 1024, "1MiB": 1024 * 1024}
ROUND_TRIP_BODY = 100


async def echo(_peer: str, body: bytes) -> bytes:
    return body


async def measure(
    endpoint: str, size: int, *, requests: int, concurrency: int, max_seconds: float
) -> dict[str, float]:
    rpc = RPC(TcpTransport())
    body = bytes(size)
    latencies: list[float] = []
    deadline = time.perf_counter() + max_seconds
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            started = time.perf_counter()
            reply = await rpc.call(endpoint, "echo", body, timeout=30)
            latencies.append(time.perf_counter() - started)
            assert len(reply) == size

    await rpc.call(endpoint, "echo", body)  # connect and warm up
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    await rpc.transport.close()
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "rpcs": len(latencies),
        "rpcs_per_s": round(len(latencies) / wall, 1),
        "megabytes_per_s": round(len(latencies) * size * 2 / wall / 1e6, 1),
        "p50_ms": round(quantiles[49] * 1000, 3),
        "p99_ms": round(quantiles[98] * 1000, 3),
    }


async def round_trips(rpc: RPC, endpoint: str, *, requests: int, max_seconds: float) -> dict[str, float]:
    """One call at a time: latency percentiles in microseconds, and CPU time per call."""
    body = bytes(ROUND_TRIP_BODY)
    await rpc.call(endpoint, "echo", body)  # connect and warm up
    latencies: list[float] = []
    deadline = time.perf_counter() + max_seconds
    cpu_started = time.process_time()
    while len(latencies) < requests and time.perf_counter() < deadline:
        started = time.perf_counter()
        await rpc.call(endpoint, "echo", body, timeout=30)
        latencies.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu_started
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "rpcs": len(latencies),
        "p50_us": round(quantiles[49] * 1e6, 1),
        "p99_us": round(quantiles[98] * 1e6, 1),
        "cpu_us": round(cpu / len(latencies) * 1e6, 1),
    }


async def round_trip_to(endpoint: str, *, requests: int, max_seconds: float) -> dict[str, float]:
    """Round trips to the server process (``cpu_us`` is this side's only)."""
    rpc = RPC(TcpTransport())
    try:
        return await round_trips(rpc, endpoint, requests=requests, max_seconds=max_seconds)
    finally:
        await rpc.transport.close()


async def round_trip_in_process(*, requests: int, max_seconds: float) -> dict[str, float]:
    """Round trips to a server on this loop (``cpu_us`` covers both ends)."""
    server, client = RPC(TcpTransport()), RPC(TcpTransport())
    server.register("echo", echo)
    try:
        endpoint = await server.serve()
        return await round_trips(client, endpoint, requests=requests, max_seconds=max_seconds)
    finally:
        await client.transport.close()
        await server.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="calls per payload size")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="time cap per payload size")
    parser.add_argument("--round-trips", type=int, default=5000, help="calls per one-at-a-time run")
    args = parser.parse_args()
    cap = min(args.max_seconds, 10.0)
    with rpc_peer("--duration", "600") as server:
        endpoint = server.endpoint
        results = {
            name: asyncio.run(
                measure(
                    endpoint,
                    size,
                    requests=args.requests,
                    concurrency=args.concurrency,
                    max_seconds=args.max_seconds,
                )
            )
            for name, size in PAYLOADS.items()
        }
        to_process = asyncio.run(round_trip_to(endpoint, requests=args.round_trips, max_seconds=cap))
    in_process = asyncio.run(round_trip_in_process(requests=args.round_trips, max_seconds=cap))
    round_trip = {"body_bytes": ROUND_TRIP_BODY, "to_process": to_process, "in_process": in_process}
    summary = {"transport": "tcp", "concurrency": args.concurrency, "payloads": results}
    print(json.dumps({**summary, "round_trip": round_trip}))


if __name__ == "__main__":
    main()
