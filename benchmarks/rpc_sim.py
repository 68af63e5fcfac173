"""Simulated RPC throughput: N peers each make M sequential RPCs to random peers.

A simulated RPC is two messages through the simulated network, the core's request
bookkeeping on both sides and the asyncio tasks around them, so its rate only means something
next to what the machine can do at all: the run also measures bare simpy on the same machine
(processes that do nothing but wait on timeouts), before and after the RPCs, and reports the
ratio (target: >= 0.06). Prints a final JSON line with peers, rpcs, wall_s, rpcs_per_s,
simpy_timeouts_per_s, ratio, the virtual duration and the trace digest (same seed, same digest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Generator

import simpy

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

    started, cpu = time.perf_counter(), time.process_time()
    completed = sim.run(main())
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    result = {
        "peers": peers,
        "rpcs": completed,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "rpcs_per_s": round(completed / wall),
        "rpcs_per_cpu_s": round(completed / cpu),
        "virtual_s": round(sim.now, 3),
        "messages": sim.trace.messages,
        "digest": sim.digest(),
    }
    sim.close()
    return result


def simpy_timeouts_per_s(*, processes: int, timeouts: int, seed: int) -> tuple[float, float]:
    """Bare simpy's rate, per wall and per CPU second: ``processes`` processes each waiting on
    ``timeouts`` random timeouts."""
    env = simpy.Environment()
    rng = random.Random(seed)

    def waiter() -> Generator[simpy.Event, None, None]:
        for _ in range(timeouts):
            yield env.timeout(rng.random() * 0.01)

    for _ in range(processes):
        env.process(waiter())
    started, cpu = time.perf_counter(), time.process_time()
    env.run()
    events = processes * timeouts
    return events / (time.perf_counter() - started), events / (time.process_time() - cpu)


def measure(*, peers: int, rpcs: int, seed: int, payload: int) -> dict[str, object]:
    """The RPC run between two bare-simpy runs (their mean is the reference: load drifts).

    The ratio is of rates per CPU second, which other work on a shared machine skews far less
    than wall time; both kinds of rate are printed."""
    before = simpy_timeouts_per_s(processes=peers, timeouts=rpcs, seed=seed)
    result = run(peers=peers, rpcs=rpcs, seed=seed, payload=payload)
    after = simpy_timeouts_per_s(processes=peers, timeouts=rpcs, seed=seed)
    wall_rate, cpu_rate = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    rate = float(result["rpcs_per_cpu_s"])  # type: ignore[arg-type]
    return result | {
        "simpy_timeouts_per_s": round(wall_rate),
        "simpy_timeouts_per_cpu_s": round(cpu_rate),
        "ratio": round(rate / cpu_rate, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rpcs", type=int, default=100, help="RPCs per peer")
    parser.add_argument("--payload", type=int, default=64, help="request body size in bytes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(measure(peers=args.peers, rpcs=args.rpcs, seed=args.seed, payload=args.payload)))


if __name__ == "__main__":
    main()
