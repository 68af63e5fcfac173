"""RPC over real TCP on loopback: echo calls to a server running in its own process.

For each payload size, a client keeps ``--concurrency`` calls in flight until ``--requests``
calls are done (or ``--max-seconds`` pass) and reports throughput and latency. Final line:
JSON with rpcs_per_s, p50_ms and p99_ms per payload.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="calls per payload size")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="time cap per payload size")
    args = parser.parse_args()
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
    print(json.dumps({"transport": "tcp", "concurrency": args.concurrency, "payloads": results}))


if __name__ == "__main__":
    main()
