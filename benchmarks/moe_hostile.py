"""An expert server under oversized requests: a good client's latency before and during.

A server process hosts ``ffn.[0:2]`` (hidden size ``--hid``). This process is a good client
that calls ``moe.forward`` with ``--batch`` samples, one call after another, for ``--seconds``
while nobody else talks to the server, then again while ``--hostile`` child processes each
keep sending requests that claim ``--rows`` rows (with the matching number of bytes, so only
the batch limit can refuse them). Final line: JSON with the good client's success rate, p50
and p99 latency before and during, and how many hostile requests were refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import torch

from hivemind_core.net import RPC, RemoteError, TcpTransport
from hivemind_sim.swarms.processes import expert_server


def hostile_main(args: argparse.Namespace) -> None:
    """One hostile process: send oversized claims until stdin closes; report refusals."""
    body = [
        "ffn.0",
        [["float32", [args.rows, args.hid], "none", bytes(4 * args.rows * args.hid), b""]],
        "none",
    ]

    async def run() -> tuple[int, int]:
        rpc = RPC(TcpTransport(max_frame_size=1 << 30))
        refused = other = 0
        reader = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        print("ready", flush=True)
        while not reader.done():
            try:
                await rpc.call(args.endpoint, "moe.forward", body, timeout=60)
                other += 1
            except RemoteError:
                refused += 1
            except Exception:
                other += 1
        await rpc.transport.close()
        return refused, other

    refused, other = asyncio.run(run())
    print(f"done {refused} {other}", flush=True)


async def good_client(endpoint: str, args: argparse.Namespace) -> dict[str, float]:
    """Forward calls, one after another, for ``args.seconds``: success rate and latencies in ms."""
    from hivemind_core.moe.tensors import deserialize_tensors, serialize_tensors

    rpc = RPC(TcpTransport())
    x = serialize_tensors([torch.randn(args.batch, args.hid)])
    latencies, failures = [], 0
    stop = time.perf_counter() + args.seconds
    try:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                deserialize_tensors(await rpc.call(endpoint, "moe.forward", ["ffn.1", x, "none"], timeout=30))
                latencies.append(1000 * (time.perf_counter() - started))
            except Exception:
                failures += 1
    finally:
        await rpc.transport.close()
    latencies.sort()
    calls = len(latencies) + failures
    return {
        "calls": calls,
        "success_rate": round(len(latencies) / max(calls, 1), 4),
        "p50_ms": round(statistics.median(latencies), 2) if latencies else float("nan"),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2)
        if latencies
        else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hid", type=int, default=16)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows each hostile request claims")
    parser.add_argument("--batch", type=int, default=16, help="the good client's batch")
    parser.add_argument("--hostile", type=int, default=2, help="hostile client processes")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--hostile-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hostile_client:
        hostile_main(args)
        return

    server = expert_server(
        "ffn.[0:2]", hidden_dim=args.hid, args=["--torch-threads", "1", "--duration", "900"]
    )
    hostile: list[subprocess.Popen[str]] = []
    try:
        before = asyncio.run(good_client(server.endpoint, args))
        for _ in range(args.hostile):
            hostile.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--hostile-client",
                        f"--endpoint={server.endpoint}",
                        f"--rows={args.rows}",
                        f"--hid={args.hid}",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for process in hostile:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        during = asyncio.run(good_client(server.endpoint, args))
        refused = other = 0
        for process in hostile:
            output, _ = process.communicate("stop\n", timeout=120)
            _, r, o = output.split()
            refused, other = refused + int(r), other + int(o)
    finally:
        for process in hostile:
            if process.poll() is None:
                process.terminate()
                process.communicate(timeout=60)
        server.stop()
    print(
        json.dumps(
            {
                "hid": args.hid,
                "rows_claimed": args.rows,
                "hostile_clients": args.hostile,
                "good_before": before,
                "good_during": during,
                "hostile_refused": refused,
                "hostile_other": other,
            }
        )
    )


if __name__ == "__main__":
    main()
