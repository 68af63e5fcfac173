"""Hostile peers (hivemind_sim.swarms.hostile) in a small simulated swarm: each behaviour does
act (its ``acts`` count), the well-behaved peers refuse what it sends (nothing it lies about
enters a routing table, a flood stays within the per-source quota, made-up values under owned
keys are never read back) and keep working (their stores, gets and lookups still succeed).
The hostile scenario event itself is checked in tests/test_shipped_scenarios.py."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.dht.storage import source_of
from hivemind_sim import Simulation, Topology
from hivemind_sim.swarms.dht_swarm import DHTSwarm
from hivemind_sim.swarms.hostile import PHANTOM_PREFIX, UNPARSABLE, Hostile, make_hostile

HONEST, HOSTILE = 14, 2
ATTACK = 20.0  # seconds of attack, in virtual time


@dataclass
class Attack:
    swarm: DHTSwarm
    honest: list[str]
    hostile: list[str]
    handles: list[Hostile]
    ops: dict[str, list[bool]] = field(default_factory=lambda: {"store": [], "get": [], "lookup": []})
    overlap: list[float] = field(default_factory=list)
    owned_reads: list[object] = field(default_factory=list)  # what gets of owned keys returned
    owned_values: list[object] = field(default_factory=list)  # what was stored under them
    tables: list[tuple[str, int, str]] = field(default_factory=list)
    """(owner, contact id, contact endpoint) for every contact in an honest routing table."""
    real: dict[int, str] = field(default_factory=dict)  # every peer's id and address
    held: dict[str, int] = field(default_factory=dict)  # bytes each honest peer holds for a hostile one

    def rate(self, op: str) -> float:
        return sum(self.ops[op]) / len(self.ops[op])

    def snapshot(self) -> None:
        """What the checks read, taken at the end of the attack."""
        nodes = self.swarm.nodes
        self.real = {node.node_id: name for name, node in nodes.items()}
        self.tables = [
            (name, contact.node_id, contact.endpoint)
            for name in self.honest
            for contact in nodes[name].routing_table.nearest(0, 10_000)
        ]
        sources = [source_of(name) for name in self.hostile]
        self.held = {name: max(map(nodes[name].storage.bytes_from, sources)) for name in self.honest}


@functools.cache
def attack(
    behaviour: str,
    *,
    seed: int = 3,
    rate: float | None = None,
    config: DHTConfig | None = None,
    seconds: float = ATTACK,
) -> Attack:
    """Join 16 peers, turn the last two hostile, and run an honest workload for ``seconds``:
    each half second, one store (every fourth under a key its writer owns), one get of an
    earlier key and one lookup judged against the live-peer oracle."""
    with Simulation(seed=seed, topology=Topology.world_regions()) as sim:
        swarm = DHTSwarm(sim, config=config or DHTConfig(max_per_subnet=None))
        result: list[Attack] = []

        async def main() -> None:
            await swarm.grow(HONEST + HOSTILE, concurrency=6)
            names = list(swarm.nodes)
            honest, hostile = names[:HONEST], names[HONEST:]
            handles = [
                make_hostile(swarm, name, behaviour, sim.random(f"hostile/{name}"), rate=rate)
                for name in hostile
            ]
            run = Attack(swarm, honest, hostile, handles)
            rng = sim.random("workload")
            keys: list[tuple[object, object]] = []
            for i in range(int(seconds * 2)):
                writer, reader, searcher = (swarm.nodes[name] for name in rng.sample(honest, 3))
                key: object = f"key{i}" if i % 4 else f"{writer.identity.ownership_marker}/key{i}"
                run.ops["store"].append(await writer.store(key, f"value{i}", writer.now() + 600))
                keys.append((key, f"value{i}"))
                read_key, value = rng.choice(keys)
                found = await reader.get(read_key)
                run.ops["get"].append(found is not None and found.value == value)
                if "owner:" in str(read_key):
                    run.owned_reads.append(None if found is None else found.value)
                    run.owned_values.append(value)
                await lookup(run, searcher, rng.getrandbits(160))
                await asyncio.sleep(0.5)
            run.snapshot()
            result.append(run)
            for handle in handles:
                handle()
            await swarm.stop()

        sim.run(main())
        return result[0]


async def lookup(run: Attack, node: DHTNode, target: int) -> None:
    found = (await node.lookup([target]))[target]
    truth = run.swarm.nearest_live(target, node.config.k, exclude=node.node_id)
    run.ops["lookup"].append(found.converged)
    run.overlap.append(len({c.node_id for c in found.nearest} & set(truth)) / len(truth))


def honest_peers_keep_working(run: Attack, floor: float = 0.95) -> None:
    for op in run.ops:
        assert run.rate(op) >= floor, f"{op} succeeded {run.rate(op):.0%} of the time: {run.ops[op]}"
    mean_overlap = sum(run.overlap) / len(run.overlap)
    assert mean_overlap >= 0.9, f"lookups found {mean_overlap:.0%} of the true nearest peers"


def no_lie_entered_a_table(run: Attack) -> None:
    """Every contact in an honest table is a real peer at its own address."""
    real = run.real
    wrong = [
        (owner, hex(node_id), endpoint)
        for owner, node_id, endpoint in run.tables
        if real.get(node_id) != endpoint
    ]
    assert not wrong, f"{len(wrong)} table entries are lies, e.g. {wrong[:3]}"


def acted(run: Attack, at_least: int) -> None:
    acts = sum(handle.acts for handle in run.handles)
    assert acts >= at_least, f"the hostile peers acted only {acts} times"


@pytest.mark.parametrize("behaviour", ["foreign_endpoint", "unparsable_endpoint"])
def test_an_endpoint_lie_never_enters_a_routing_table(behaviour: str) -> None:
    run = attack(behaviour)
    acted(run, at_least=ATTACK)  # a lie a second at least, per peer
    no_lie_entered_a_table(run)
    endpoints = {endpoint for _, _, endpoint in run.tables}
    assert not endpoints & set(UNPARSABLE)
    assert not any(endpoint.startswith(PHANTOM_PREFIX) for endpoint in endpoints)
    # the liars stay known where they really listen (their entries from before the lies)
    assert {name for name in run.hostile} <= endpoints
    honest_peers_keep_working(run)


@pytest.mark.parametrize("behaviour", ["junk_contacts", "phantom_contacts"])
def test_contacts_made_up_in_find_answers_never_enter_a_routing_table(behaviour: str) -> None:
    run = attack(behaviour)
    acted(run, at_least=50)  # find answers rewritten
    no_lie_entered_a_table(run)
    assert run.rate("store") >= 0.95 and run.rate("lookup") >= 0.95, run.ops


def test_junk_contacts_cost_the_honest_peers_nothing() -> None:
    honest_peers_keep_working(attack("junk_contacts"))


def test_phantom_contacts_cost_the_honest_peers_nothing() -> None:
    """Before lookups judged referrers (traverse.DISTRUST_AFTER), 10-15% of honest gets waited out
    their whole deadline (15-17 s) and returned nothing."""
    honest_peers_keep_working(attack("phantom_contacts", seconds=30.0))


def test_phantom_values_under_owned_keys_are_never_read_back() -> None:
    run = attack("phantom_values")
    acted(run, at_least=50)
    assert len(run.owned_reads) >= 5
    phantom = [read for read in run.owned_reads if isinstance(read, str) and read.startswith("phantom")]
    assert not phantom, f"{len(phantom)} reads of owned keys returned a made-up value"
    assert run.owned_reads == run.owned_values
    no_lie_entered_a_table(run)


def test_a_store_flood_stays_within_each_victims_quota() -> None:
    quota = 64 * 1024
    config = DHTConfig(max_per_subnet=None, max_bytes_per_source=quota)
    run = attack("store_flood", rate=200.0, config=config)
    acted(run, at_least=200 * ATTACK * HOSTILE * 0.9)
    held = run.held
    assert max(held.values()) <= quota, held
    assert sum(size > quota // 2 for size in held.values()) >= 3, f"the flood hardly reached anyone: {held}"
    honest_peers_keep_working(run)


def test_requests_whose_answers_are_never_read_do_not_stop_the_victims() -> None:
    run = attack("never_read", rate=200.0)
    acted(run, at_least=200 * ATTACK * HOSTILE * 0.9)  # answers dropped unread
    honest_peers_keep_working(run)


def test_undo_makes_the_peer_play_fair_again() -> None:
    with Simulation(seed=5, topology=Topology.world_regions()) as sim:
        swarm = DHTSwarm(sim)

        async def main() -> None:
            await swarm.grow(6, concurrency=6)
            name = list(swarm.nodes)[-1]
            node = swarm.nodes[name]
            honest = {method: node.rpc._methods[method] for method in ("dht.find", "dht.store")}
            sent = node.calls.me()
            handles: list[Callable[[], None]] = [
                make_hostile(swarm, name, behaviour, sim.random(behaviour))
                for behaviour in ("phantom_values", "foreign_endpoint", "never_read")
            ]
            await asyncio.sleep(2)
            assert node.calls.me()[1] != name  # it lies now
            for handle in reversed(handles):
                handle()
                handle()  # twice is harmless
            assert {method: node.rpc._methods[method] for method in honest} == honest
            assert node.calls.me() == sent
            assert "frame_arrived" not in vars(node.rpc.transport)
            await swarm.stop()

        sim.run(main())


def test_an_unknown_behaviour_is_refused_by_name() -> None:
    with Simulation(seed=0) as sim:
        swarm = DHTSwarm(sim)

        async def main() -> None:
            await swarm.grow(2)
            with pytest.raises(ValueError, match="behaviour must be one of foreign_endpoint"):
                make_hostile(swarm, next(iter(swarm.nodes)), "rude", sim.random("x"))
            await swarm.stop()

        sim.run(main())
