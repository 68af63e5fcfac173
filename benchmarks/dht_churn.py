"""Durability under churn: how many stored keys a swarm keeps, and what keeping them costs.

N simulated peers (world-region latencies) join, one of them stores K keys that outlive the run,
then every peer comes and goes for ``--hours`` virtual hours: Weibull sessions and downtimes
(shape ``--shape``, medians ``--session`` and ``--downtime`` seconds), a ``--graceful``
fraction of leaves handing records on, the rest crashing. At the end a key is *held* if a live
peer stores it and *readable* if a get from a random live peer finds it. Traffic is every frame
the network delivered during the churn, per live peer and hour. Progress goes to stderr every
``--progress`` virtual seconds; the final line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from typing import Any

from hivemind_core.dht import DHTConfig, StoreItem, key_id, serialize_key
from hivemind_sim import AccessLink, Simulation, Topology
from hivemind_sim.swarms.churn import ChurnModel, Weibull
from hivemind_sim.swarms.dht_swarm import DHTSwarm

LINKS = [
    AccessLink(uplink_bps=20e6, downlink_bps=100e6, latency=0.015),
    AccessLink(uplink_bps=1e9, downlink_bps=1e9, latency=0.003),
]


def weibull_with_median(median: float, shape: float) -> Weibull:
    """The Weibull distribution of this shape whose median is ``median``."""
    return Weibull(shape=shape, scale=median / math.log(2) ** (1 / shape))


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = DHTConfig(
        max_per_subnet=None,
        republish_interval=args.republish,
        refresh_interval=args.refresh,
        replicas=args.replicas,
    )
    sim = Simulation(seed=args.seed, topology=Topology.world_regions(), jitter=0.05)
    swarm = DHTSwarm(sim, links=LINKS, config=config)
    started = time.perf_counter()

    def progress(message: str) -> None:
        wall = time.perf_counter() - started
        print(f"[{sim.now:7.0f} s virtual, {wall:6.0f} s wall] {message}", file=sys.stderr, flush=True)

    def held(keys: list[int]) -> int:
        now = sim.now
        return sum(1 for k in keys if any(node.storage.get(k, now) is not None for node in swarm.live))

    async def main() -> dict[str, Any]:
        await swarm.grow(args.peers, concurrency=args.join_concurrency)
        progress(f"{args.peers} peers joined")
        rng = sim.random("churn-benchmark")
        writer = rng.choice(swarm.live)
        end = writer.now() + args.hours * 3600
        names = [f"key{i}" for i in range(args.keys)]
        items = [StoreItem(name, i, end + 3600) for i, name in enumerate(names)]
        acknowledged = await writer.store_many(items)
        ids = [key_id(serialize_key(name)) for name in names]
        model = ChurnModel(
            session=weibull_with_median(args.session, args.shape),
            downtime=weibull_with_median(args.downtime, args.shape),
            graceful_fraction=args.graceful,
        )
        stats = sim.network.stats
        frames, traffic = stats.delivered, stats.bytes_delivered
        churn_start = sim.now
        swarm.churn(model, until=churn_start + args.hours * 3600)
        live_samples = []
        while sim.now < churn_start + args.hours * 3600:
            await asyncio.sleep(min(args.progress, churn_start + args.hours * 3600 - sim.now))
            live_samples.append(len(swarm.nodes))
            progress(f"{len(swarm.nodes)} peers up, {held(ids)}/{args.keys} keys held")
        peer_hours = sum(live_samples) / len(live_samples) * args.hours
        frames, traffic = stats.delivered - frames, stats.bytes_delivered - traffic
        await swarm.settle()
        kept = held(ids)
        readable = 0
        for i, name in enumerate(names):
            found = await rng.choice(swarm.live).get(name)
            readable += found is not None and found.value == i
        await swarm.stop()
        return {
            "acknowledged": sum(acknowledged),
            "held": kept,
            "readable": readable,
            "kept_fraction": round(readable / args.keys, 4),
            "mean_live_peers": round(sum(live_samples) / len(live_samples), 1),
            "messages_per_peer_hour": round(frames / peer_hours, 1),
            "kbytes_per_peer_hour": round(traffic / peer_hours / 1000, 1),
        }

    result = sim.run(main())
    sim.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--hours", type=float, default=2.0, help="virtual hours of churn")
    parser.add_argument("--republish", type=float, default=DHTConfig.republish_interval)
    parser.add_argument("--refresh", type=float, default=DHTConfig.refresh_interval)
    parser.add_argument("--replicas", type=int, default=DHTConfig.replicas)
    parser.add_argument("--shape", type=float, default=0.55, help="Weibull shape of sessions and downtimes")
    parser.add_argument("--session", type=float, default=1800.0, help="median session, seconds")
    parser.add_argument("--downtime", type=float, default=600.0, help="median downtime, seconds")
    parser.add_argument("--graceful", type=float, default=0.3, help="fraction of leaves that hand records on")
    parser.add_argument("--join-concurrency", type=int, default=25)
    parser.add_argument("--progress", type=float, default=600.0, help="virtual seconds between reports")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(args)
    settings = {
        name: getattr(args, name)
        for name in ("peers", "keys", "hours", "republish", "refresh", "replicas", "seed")
    }
    print(json.dumps({**settings, **result, "wall_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
