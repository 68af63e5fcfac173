"""The peers of a scenario: DHT nodes placed by group, and what runs on them.

Every peer is a DHT node of one :class:`DHTSwarm`, named ``<group>-<index>``, placed on its
group's regions with an access link drawn from the group's distributions. Expert servers and
trainers follow their node's life through the swarm's hooks: a crash or a leave stops the
server (its experts' parameters survive, as a checkpoint would) and pauses the trainer; a
rejoin starts them again on the new node.
"""

from __future__ import annotations

import asyncio
import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hivemind_core.dht import BootstrapError, DHTNode
from hivemind_core.moe.server import ExpertBackend, ExpertServer
from hivemind_core.moe.uid import grid_share

from ...swarms.baton import Baton
from ...swarms.compute import DeviceModel, SimulatedDevice
from ...swarms.dht_swarm import DHTSwarm
from ...world.network import AccessLink
from ...world.simulation import Simulation
from ...world.topology import Topology
from ..format import schema
from ..results.metrics import Recorder
from .failures import PeerFailures, RunStopped
from .live import LiveNames
from .training import Dataset, Trainer

JOIN_WAVE = 25
"""Peers that join at once during the warmup, at first (a flash crowd joins all at once)."""
JOIN_WAVES = 40
"""Big swarms join in about this many full waves, so that 10,000 peers fit in a few minutes."""


def join_waves(count: int) -> list[tuple[int, int]]:
    """Slices of ``count`` joining peers: waves of ``JOIN_WAVE`` that grow by half each time, up
    to a 40th of the swarm. A wave never outnumbers the peers already up by much, so 100,000
    peers do not all bootstrap through the first few (2,500 at once through one peer spent
    minutes of wall time on a single simulated second).
    """
    full = max(JOIN_WAVE, math.ceil(count / JOIN_WAVES))
    waves, start, size = [], 0, JOIN_WAVE
    while start < count:
        end = min(count, start + size)
        waves.append((start, end))
        start, size = end, min(full, size + size // 2)
    return waves


@dataclass(frozen=True)
class Placement:
    group: schema.PeerGroup
    region: object
    link: AccessLink
    client_mode: bool
    device_flops: float
    trainer_flops: float


def build_topology(spec: schema.Topology, *, seed: int) -> Topology:
    """The backbone a scenario names (generated from its seed when random), with its edges'
    bandwidth when the scenario gives one."""
    params = {key: spec.param(key) for key in spec.params}
    if spec.kind == "world_regions":
        topology = Topology.world_regions()
    elif spec.kind == "file":
        assert spec.path is not None
        unit = params.pop("latency_unit", 1.0)
        topology = Topology.from_graphml(spec.path, scale=unit, **params)
    else:
        assert spec.nodes is not None
        build = {
            "waxman": Topology.waxman,
            "barabasi_albert": Topology.barabasi_albert,
            "random_geometric": Topology.random_geometric,
        }[spec.kind]
        topology = build(spec.nodes, seed=seed, **params)
    if spec.backbone_bandwidth is not None:
        topology = topology.with_backbone_bandwidth(spec.backbone_bandwidth)
    return topology


class ScenarioPeers:
    """All peers of a scenario and the expert servers and trainers running on them."""

    def __init__(
        self,
        scenario: schema.Scenario,
        sim: Simulation,
        *,
        recorder: Recorder,
        failures: PeerFailures,
        baton: Baton,
        dataset: Dataset | None,
        clock: Callable[[], float],
    ) -> None:
        self.scenario = scenario
        self.sim = sim
        self.recorder = recorder
        self.failures = failures
        self.baton = baton
        self.dataset = dataset
        self.clock = clock
        self.swarm = DHTSwarm(sim, config=scenario.dht.config(max_per_subnet=None))
        self.swarm.hooks = self
        self.swarm.on_error = failures.record
        self.placements = self._place()
        # live peers per group, kept at each change (the swarm's nodes say who, these how many)
        self.live_count = {group.group: 0 for group in scenario.peers}
        self._tracked: list[LiveNames] = []
        self.on_change: Callable[[str], None] = lambda name: None  # a peer just went up or down
        self.servers: dict[str, ExpertServer] = {}
        self.devices: dict[str, SimulatedDevice] = {}
        self.trainers: dict[str, Trainer] = {}
        self._backends: dict[str, list[ExpertBackend]] = {}
        self.hosted = self._assign_experts()
        """Grid expert UIDs per hosting peer (what a deployment hands each real server too)."""

    # ---- who is where --------------------------------------------------------------------------------

    def _place(self) -> dict[str, Placement]:
        placements: dict[str, Placement] = {}
        by_name = {str(node): node for node in self.sim.network.topology.nodes}
        for group in self.scenario.peers:
            rng = self.sim.random(f"placement/{group.group}")
            regions = group.placed_on(list(by_name))
            behind_nat = set(rng.sample(range(group.count), round(group.client_mode * group.count)))
            link, hardware = group.link, group.hardware
            for index, name in enumerate(group.peer_names()):
                access = AccessLink(
                    uplink_bps=_sample(link.uplink, rng),
                    downlink_bps=_sample(link.downlink, rng),
                    latency=link.latency.sample(rng),
                    loss=link.loss,
                )
                device = hardware.device.sample(rng)
                trainer = hardware.trainer_device.sample(rng) if hardware.trainer_device else device
                placements[name] = Placement(
                    group, by_name[regions[index]], access, index in behind_nat, device, trainer
                )
        return placements

    def _assign_experts(self) -> dict[str, list[str]]:
        """Grid experts per hosting peer: consecutive shares of the grid, round-robin."""
        training = self.scenario.workload.training
        hosts = [name for name, p in self.placements.items() if p.group.hosts_experts]
        if training is None or not hosts:
            return {}
        size = math.prod(training.grid)
        hosted: dict[str, list[str]] = {}
        cursor = 0
        for name in hosts:
            count = min(self.placements[name].group.experts, size)
            hosted[name] = grid_share(training.model.expert, training.grid, cursor, count)
            cursor += count
        return hosted

    def alive(self, names: list[str] | None = None) -> list[str]:
        nodes = self.swarm.nodes
        return [name for name in (names if names is not None else self.placements) if name in nodes]

    def tracked(self, names: list[str]) -> LiveNames:
        """``alive(names)``, kept up to date from now on (for what asks it per operation)."""
        live = LiveNames(names, self.swarm.nodes)
        self._tracked.append(live)
        return live

    # ---- joining ---------------------------------------------------------------------------------------

    async def join_warmup_groups(self, on_wave: Callable[[], None] = lambda: None) -> None:
        """Every peer of groups without ``join_at``: the first bootstraps, then waves join
        (``on_wave`` after each, for progress). A peer that cannot join stays down (a churning
        one tries again when its next session starts); if none can, the run stops."""
        names = [name for name, p in self.placements.items() if p.group.join_at is None]
        reachable = [name for name in names if not self.placements[name].client_mode]
        if not reachable:
            raise ValueError("the peers present from the start are all in client mode: nobody can join")
        first = reachable[0]
        await self._add(first, initial=[])
        rest = [name for name in names if name != first]
        failures: list[str] = []
        for start, end in join_waves(len(rest)):
            outcomes = await asyncio.gather(*(self._add(name) for name in rest[start:end]))
            failures += [reason for reason in outcomes if reason is not None]
            on_wave()
        if rest and len(failures) == len(rest):
            raise RunStopped(
                f"none of the {len(rest)} peers that joined after {first} could join during the warmup; "
                f"the first: {failures[0]} (are the links' latency or loss far too high?)"
            )

    async def join_crowd(self, group: schema.PeerGroup) -> None:
        """A flash crowd: the whole group joins at once through one initial peer."""
        live = [name for name in self.alive() if not self.placements[name].client_mode]
        initial = live[:1]
        await asyncio.gather(*(self._add(name, initial=initial) for name in group.peer_names()))

    async def _add(self, name: str, initial: list[str] | None = None) -> str | None:
        """Start peer ``name``; None when it joined, else why it could not (it is then down)."""
        placement = self.placements[name]
        try:
            await self.swarm.add_peer(
                initial,
                address=name,
                region=placement.region,
                link=placement.link,
                client_mode=placement.client_mode,
            )
            return None
        except BootstrapError as error:
            self.failures.join_failed(name, error)
            reason = str(error)
        except Exception as error:
            self.failures.record(name, "joining", error)
            reason = f"{type(error).__name__}: {error}"
        if name not in self.swarm.nodes:
            self.swarm.departed.add(name)  # churn or the end of a `leave` event brings it back
        return f"{name}: {reason}"

    # ---- SwarmHooks: what runs on a node follows its life ------------------------------------------

    async def started(self, address: str, node: DHTNode) -> None:
        placement = self.placements[address]
        self.live_count[placement.group.group] += 1
        for live in self._tracked:
            live.started(address)
        self.on_change(address)
        if address in self.hosted:
            device = self.devices.setdefault(
                address, SimulatedDevice(DeviceModel(flops=placement.device_flops))
            )
            server = ExpertServer(
                self._backends_of(address),
                rpc=node.rpc,
                dht=node,
                executor=device,
                rng=self.sim.random(f"server/{address}/{self.sim.now!r}"),
            )
            await server.start()
            self.servers[address] = server
        if placement.group.trains and self.dataset is not None:
            trainer = self.trainers.get(address)
            if trainer is None:
                trainer = self.trainers[address] = self._trainer(address, placement)
            trainer.started(node)

    async def stopping(self, address: str, *, crashed: bool) -> None:
        self.live_count[self.placements[address].group.group] -= 1
        for live in self._tracked:
            live.stopped(address)
        self.on_change(address)
        trainer = self.trainers.get(address)
        if trainer is not None:
            trainer.stopped()
        server = self.servers.pop(address, None)
        if server is not None:
            await server.shutdown()  # a dead machine runs nothing, its announcer included

    def _backends_of(self, address: str) -> list[ExpertBackend]:
        if address not in self._backends:
            training = self.scenario.workload.training
            assert training is not None
            self._backends[address] = [
                ExpertBackend.create(
                    uid,
                    training.model.expert,
                    training.model.hidden_dim,
                    lr=training.optimizer.lr,
                    generator=torch.Generator().manual_seed(_stable_seed(self.scenario.seed, address, uid)),
                )
                for uid in self.hosted[address]
            ]
        return self._backends[address]

    def _trainer(self, address: str, placement: Placement) -> Trainer:
        training = self.scenario.workload.training
        assert training is not None and self.dataset is not None
        return Trainer(
            name=address,
            group=placement.group.group,
            workload=training,
            dataset=self.dataset,
            seed=_stable_seed(self.scenario.seed, address, "trainer"),
            device_flops=placement.trainer_flops,
            concurrent_batches=placement.group.concurrent_batches,
            baton=self.baton,
            recorder=self.recorder,
            failures=self.failures,
            clock=self.clock,
        )


def _sample(quantity: object, rng: random.Random) -> float:
    return math.inf if quantity is None else quantity.sample(rng)  # type: ignore[attr-defined]


def _stable_seed(*parts: object) -> int:
    """A seed from names, the same in every process (``hash`` of a str is not)."""
    return zlib.crc32("/".join(map(str, parts)).encode())
