"""A simulated DMoE training swarm: expert servers and trainers on world-region latencies.

Expert servers (DHT peers hosting a share of an ``ffn`` grid, on simulated devices) and
trainers (DHT peers training Linear -> RemoteMixtureOfExperts -> Linear on a synthetic task,
each in its own thread under the deterministic baton) run the unmodified core code. Part of
the servers can crash mid-run. The run is reproducible: same config, same trace digest.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from hivemind_core.dht import DHTConfig
from hivemind_core.moe.client import MoEClient, RemoteMixtureOfExperts
from hivemind_core.moe.server import ExpertBackend, ExpertServer
from hivemind_core.moe.uid import expand_pattern

from ..world.network import AccessLink
from ..world.simulation import Simulation
from ..world.topology import Topology
from .baton import Baton
from .compute import DeviceModel, SimulatedDevice
from .dht_swarm import DHTSwarm


@dataclass(frozen=True)
class MoESwarmConfig:
    servers: int = 32
    trainers: int = 8
    grid: tuple[int, int] = (8, 8)
    hidden_dim: int = 32
    steps: int = 10
    batch: int = 16
    k_best: int = 4
    k_min: int = 1
    crash_servers: int = 0
    crash_at: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.servers < 1 or self.trainers < 1 or self.steps < 1:
            raise ValueError("a swarm needs at least one server, one trainer and one step")
        if self.servers > math.prod(self.grid):
            raise ValueError(f"{self.servers} servers cannot share a grid of {math.prod(self.grid)} experts")
        if not 0 <= self.crash_servers < self.servers:
            raise ValueError("crash_servers must leave at least one server alive")


@dataclass
class MoESwarmReport:
    config: MoESwarmConfig
    first_loss: float
    last_loss: float
    losses: list[list[float]] = field(default_factory=list)
    virtual_s: float = 0.0
    wall_s: float = 0.0
    messages: int = 0
    digest: str = ""

    def as_dict(self) -> dict[str, object]:
        summary = asdict(self)
        summary.pop("losses")
        return summary


def _task(hidden_dim: int, generator: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic classification task: the label is the argmax of a fixed projection."""
    x = torch.randn(batch, hidden_dim, generator=generator)
    return x, x[:, :4].argmax(dim=1)


def run_moe_swarm(config: MoESwarmConfig) -> MoESwarmReport:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible results, whatever the machine's core count
    try:
        return _run(config)
    finally:
        torch.set_num_threads(threads)


def _run(config: MoESwarmConfig) -> MoESwarmReport:
    links = [
        AccessLink(uplink_bps=50e6, downlink_bps=200e6, latency=0.01),
        AccessLink(uplink_bps=1e9, downlink_bps=1e9, latency=0.002),
    ]
    with Simulation(seed=config.seed, topology=Topology.world_regions(), jitter=0.05) as sim:
        swarm = DHTSwarm(sim, links=links, config=DHTConfig(max_per_subnet=None))
        uids = expand_pattern(f"ffn.[0:{config.grid[0]}].[0:{config.grid[1]}]")
        torch.manual_seed(config.seed)
        shares = [uids[i :: config.servers] for i in range(config.servers)]
        backends = [
            [ExpertBackend.create(uid, "ffn", config.hidden_dim, lr=3e-3) for uid in share]
            for share in shares
        ]
        baton = Baton()
        servers: dict[str, ExpertServer] = {}
        losses: list[list[float]] = []

        async def crash(address: str) -> None:
            await swarm.crash(address)
            await servers.pop(address).shutdown()  # a dead machine runs nothing, announcer included

        async def main() -> None:
            server_nodes = await swarm.grow(config.servers, concurrency=8)
            for i, (node, hosted) in enumerate(zip(server_nodes, backends, strict=True)):
                server = ExpertServer(
                    hosted,
                    rpc=node.rpc,
                    dht=node,
                    executor=SimulatedDevice(DeviceModel(flops=2e12)),
                    rng=sim.random(f"server{i}"),
                )
                await server.start()
                assert node.endpoint is not None
                servers[node.endpoint] = server
            trainer_nodes = await swarm.grow(config.trainers, concurrency=8)
            victims = sim.random("crashes").sample(list(servers), config.crash_servers)

            def crash_wave(env):  # a simpy process: servers die mid-training
                yield env.timeout(config.crash_at)
                for address in victims:
                    sim.loop.create_task(crash(address))

            sim.env.process(crash_wave(sim.env))
            models = []
            for i in range(config.trainers):
                torch.manual_seed(config.seed * 1000 + i)
                client = MoEClient(rpc=trainer_nodes[i].rpc, dht=trainer_nodes[i], bridge=baton)
                models.append(
                    nn.Sequential(
                        nn.Linear(config.hidden_dim, config.hidden_dim),
                        RemoteMixtureOfExperts(
                            in_features=config.hidden_dim,
                            grid_size=config.grid,
                            uid_prefix="ffn",
                            client=client,
                            k_best=config.k_best,
                            k_min=config.k_min,
                            forward_timeout=3.0,
                            backward_timeout=5.0,
                            timeout_after_k_min=0.5,
                        ),
                        nn.Linear(config.hidden_dim, 4),
                    )
                )

            def train(i: int) -> list[float]:
                model = models[i]
                optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
                generator = torch.Generator().manual_seed(config.seed * 1000 + i)
                history = []
                for _ in range(config.steps):
                    x, y = _task(config.hidden_dim, generator, config.batch)
                    loss = nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    history.append(loss.item())
                return history

            losses.extend(
                await asyncio.gather(*(baton.call(lambda i=i: train(i)) for i in range(config.trainers)))
            )
            for server in servers.values():
                await server.shutdown()
            await swarm.stop()

        started = time.perf_counter()
        sim.run(main())
        wall = time.perf_counter() - started
        first = sum(history[0] for history in losses) / len(losses)
        last = sum(history[-1] for history in losses) / len(losses)
        return MoESwarmReport(
            config,
            round(first, 4),
            round(last, 4),
            losses,
            round(sim.now, 3),
            round(wall, 3),
            sim.trace.messages,
            sim.digest(),
        )
