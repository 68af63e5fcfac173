"""A short simulated swarm on embedded defaults: the project's main job until scenarios exist.

Peers spread over eight world regions, on home, campus and datacenter links (a fifth of them
lossy), call each other at random; part of the swarm crashes mid-run. The report shows how
many calls succeeded, how they failed, virtual latencies, and the trace digest.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from hivemind_core.net import RPC, TransportClosed, TransportError

from ..world.network import AccessLink
from ..world.simulation import Simulation
from ..world.topology import Topology

LINK_PROFILES: dict[str, AccessLink] = {
    "home": AccessLink(uplink_bps=20e6, downlink_bps=100e6, latency=0.015),
    "campus": AccessLink(uplink_bps=1e9, downlink_bps=1e9, latency=0.003),
    "datacenter": AccessLink(uplink_bps=10e9, downlink_bps=10e9, latency=0.0005),
}


@dataclass(frozen=True)
class SwarmConfig:
    peers: int = 200
    rpcs_per_peer: int = 20
    seed: int = 0
    crash_fraction: float = 0.1
    crash_at: float = 5.0
    lossy_fraction: float = 0.2
    loss: float = 0.02
    timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.peers < 2:
            raise ValueError(f"a swarm needs at least 2 peers, got {self.peers}")
        if self.rpcs_per_peer < 0:
            raise ValueError(f"rpcs_per_peer must be >= 0, got {self.rpcs_per_peer}")
        for name in ("crash_fraction", "lossy_fraction", "loss"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class SwarmReport:
    peers: int
    calls: int
    succeeded: int
    failures: dict[str, int] = field(default_factory=dict)
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    crashed: int = 0
    virtual_s: float = 0.0
    wall_s: float = 0.0
    messages: int = 0
    megabytes: float = 0.0
    digest: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run_swarm(config: SwarmConfig) -> SwarmReport:
    """Run the demo swarm in virtual time and summarize what happened."""
    with Simulation(seed=config.seed, topology=Topology.world_regions(), jitter=0.1) as sim:
        placement = sim.random("placement")
        regions = sim.network.topology.nodes
        addresses = [f"peer{i:04d}" for i in range(config.peers)]
        rpcs = []
        for address in addresses:
            profile = LINK_PROFILES[placement.choice(list(LINK_PROFILES))]
            if placement.random() < config.lossy_fraction:
                profile = AccessLink(**{**asdict(profile), "loss": config.loss})
            rpcs.append(RPC(sim.add_peer(address, node=placement.choice(regions), link=profile)))

        victims = sim.random("crashes").sample(addresses, round(config.crash_fraction * config.peers))

        def crash_wave(env):  # a simpy process, interleaved with the asyncio peers
            yield env.timeout(config.crash_at)
            for address in victims:
                sim.network.crash(address)

        sim.env.process(crash_wave(sim.env))
        latencies: list[float] = []
        outcomes: Counter[str] = Counter()

        async def echo(_peer: str, body: object) -> object:
            return body

        async def client(index: int) -> None:
            rng = sim.random(f"client{index}")
            loop = asyncio.get_running_loop()
            for _ in range(config.rpcs_per_peer):
                await asyncio.sleep(rng.expovariate(2.0))
                target = addresses[(index + 1 + rng.randrange(config.peers - 1)) % config.peers]
                body = bytes(int(2 ** rng.uniform(6, 18)))  # 64 B to 256 KiB
                started = loop.time()
                try:
                    await rpcs[index].call(target, "echo", body, timeout=config.timeout)
                except TransportClosed:
                    outcomes["caller crashed"] += 1
                    return
                except TransportError as error:
                    outcomes[type(error).__name__] += 1
                else:
                    outcomes["ok"] += 1
                    latencies.append(loop.time() - started)

        async def main() -> None:
            for rpc in rpcs:
                rpc.register("echo", echo)
                await rpc.serve()
            await asyncio.gather(*(client(i) for i in range(config.peers)))

        wall_started = time.perf_counter()
        sim.run(main())
        wall = time.perf_counter() - wall_started
        quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [math.nan] * 99
        succeeded = outcomes.pop("ok", 0)
        return SwarmReport(
            peers=config.peers,
            calls=succeeded + sum(outcomes.values()),
            succeeded=succeeded,
            failures=dict(sorted(outcomes.items())),
            latency_p50_ms=round(quantiles[49] * 1000, 3),
            latency_p99_ms=round(quantiles[98] * 1000, 3),
            crashed=len(victims),
            virtual_s=round(sim.now, 3),
            wall_s=round(wall, 3),
            messages=sim.trace.messages,
            megabytes=round(sim.trace.bytes / 1e6, 3),
            digest=sim.digest(),
        )
