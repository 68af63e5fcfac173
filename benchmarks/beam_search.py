"""What the beam search costs per call, with expert declarations as they are announced today.

``--servers`` expert servers (DHT peers over TCP on loopback, all in this process) host a
``--grid`` of experts between them: ``--layout stripes`` gives each server a stripe of every
row (so every prefix entry holds declarations from every server: the worst case for signed
declarations, one per server and coordinate), ``blocks`` a block of whole rows. A client-mode
peer searches the top ``--k`` experts for ``--batch`` samples with random gating logits:
``--calls`` searches served from the prefix cache (what a training step pays) and ``--calls``
with ``fresh`` (each fetches every prefix it needs from the DHT, merging the replicas: what a
retry after failures, or a cold cache, pays). Also timed: one server's announcement of its
experts (CPU of this process, which holds every receiver too). Final line: JSON with wall and
CPU milliseconds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import torch

from hivemind_core.bridge import LoopBridge
from hivemind_core.dht import DHTNode
from hivemind_core.moe.client import MoEBeamSearcher, MoEClient
from hivemind_core.moe.server import DeviceThread, ExpertBackend, ExpertServer, ServerConfig
from hivemind_core.moe.uid import expand_pattern
from hivemind_core.net import TcpConfig, TcpTransport


async def timed(calls: int, search) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Wall and CPU milliseconds per call of ``search()``, ``calls`` times one after another.

    CPU time is this process's (the servers answering the lookups live here too), which other
    programs on a shared machine disturb less than wall time."""
    wall, cpu = [], []
    for _ in range(calls):
        started, started_cpu = time.perf_counter(), time.process_time()
        await search()
        wall.append(1000 * (time.perf_counter() - started))
        cpu.append(1000 * (time.process_time() - started_cpu))
    return {
        "wall_median_ms": round(statistics.median(wall), 3),
        "cpu_mean_ms": round(statistics.fmean(cpu), 3),
        "cpu_median_ms": round(statistics.median(cpu), 3),
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    rows, cols = args.grid
    uids = expand_pattern(f"ffn.[0:{rows}].[0:{cols}]")
    share = -(-len(uids) // args.servers)
    servers: list[ExpertServer] = []
    nodes: list[DHTNode] = []
    for i in range(args.servers):
        initial = [nodes[0].endpoint] if nodes else []
        node = await DHTNode.create(TcpTransport(TcpConfig(host="127.0.0.1")), initial_peers=initial)
        nodes.append(node)
        mine = uids[i :: args.servers] if args.layout == "stripes" else uids[i * share : (i + 1) * share]
        backends = [ExpertBackend.create(uid, "ffn", 4, seed=j) for j, uid in enumerate(mine)]
        server = ExpertServer(
            backends,
            rpc=node.rpc,
            dht=node,
            executor=DeviceThread(),
            config=ServerConfig(announce_period=3600),
        )
        await server.start()
        servers.append(server)
    started = time.process_time()
    await servers[0].announce()
    announce_cpu_ms = 1000 * (time.process_time() - started)
    client_node = await DHTNode.create(
        TcpTransport(TcpConfig(host="127.0.0.1")), initial_peers=[nodes[0].endpoint], client_mode=True
    )
    client = MoEClient(rpc=client_node.rpc, dht=client_node, bridge=LoopBridge(asyncio.get_running_loop()))
    searcher = MoEBeamSearcher(client, "ffn", [rows, cols], cache_ttl=3600, max_staleness=3600)
    generator = torch.Generator().manual_seed(0)

    def logits() -> list[torch.Tensor]:
        return [torch.randn(args.batch, size, generator=generator) for size in (rows, cols)]

    first = await searcher.search(logits(), args.k, fresh=True)
    found = sum(len(picks) for picks in first)
    cached = await timed(args.calls, lambda: searcher.search(logits(), args.k))
    fresh = await timed(args.calls, lambda: searcher.search(logits(), args.k, fresh=True))
    await searcher.close()
    await client.close()
    for server in servers:
        await server.shutdown()
    for node in [client_node, *nodes]:
        await node.shutdown(handoff_timeout=0)
    return {
        "benchmark": "beam_search",
        "servers": args.servers,
        "grid": [rows, cols],
        "layout": args.layout,
        "batch": args.batch,
        "k": args.k,
        "experts_found": found,
        "expected": args.batch * args.k,
        "cached": cached,
        "fresh": fresh,
        "announce_cpu_ms": round(announce_cpu_ms, 2),
        "experts_per_server": len(uids) // args.servers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=8)
    parser.add_argument("--grid", type=int, nargs=2, default=[16, 16], metavar=("ROWS", "COLS"))
    parser.add_argument("--layout", choices=("stripes", "blocks"), default="stripes")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
