"""Simulated RPC throughput: N peers each make M sequential RPCs to random peers.

Prints a final JSON line with peers, rpcs, wall_s, rpcs_per_s (target: >= 30000 on one core),
plus the virtual duration and the trace digest (same seed, same digest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from hivemind_core.net import RPC
from hivemind_sim import AccessLink, Simulation, Topology


def run(*, peers: int, rpcs: int, seed: int, payload: int) -> dict[str, object]:
    sim = Simulation(seed=seed, topology=Topology.world_regions())
    regions = sim.network.topology.nodes
    placement = sim.random("placement")
    link = AccessLink(uplink_bps=100e6, downlink_bps=100e6, latency=0.005)
    nodes = [RPC(sim.add_peer(f"peer{i}", node=placement.choice(regions), link=link)) for i in range(peers)]

    async def echo(_peer: str, body: object) -> object:
        return body

    async def client(rpc: RPC, rng_name: str) -> int:
        rng = sim.random(rng_name)
        body = bytes(payload)
        ok = 0
        for _ in range(rpcs):
            target = nodes[rng.randrange(peers)].endpoint
            assert target is not None
            await rpc.call(target, "echo", body, timeout=5.0)
            ok += 1
        return ok

    async def main() -> int:
        for node in nodes:
            node.register("echo", echo)
            await node.serve()
        results = await asyncio.gather(*(client(n, f"client{i}") for i, n in enumerate(nodes)))
        return sum(results)

    started = time.perf_counter()
    completed = sim.run(main())
    wall = time.perf_counter() - started
    result = {
        "peers": peers,
        "rpcs": completed,
        "wall_s": round(wall, 3),
        "rpcs_per_s": round(completed / wall),
        "virtual_s": round(sim.now, 3),
        "messages": sim.trace.messages,
        "digest": sim.digest(),
    }
    sim.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rpcs", type=int, default=100, help="RPCs per peer")
    parser.add_argument("--payload", type=int, default=64, help="request body size in bytes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(peers=args.peers, rpcs=args.rpcs, seed=args.seed, payload=args.payload)))


if __name__ == "__main__":
    main()
