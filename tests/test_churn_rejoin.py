"""Churn in a DHT swarm: a peer that comes back while it is still leaving waits for its old self.

A graceful leave hands the peer's records on before its transport lets go of the address; a
peer whose downtime is shorter than that hand-off must rejoin after it, not crash the churn.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from hivemind_core.dht import StoreItem
from hivemind_sim import Simulation, Topology
from hivemind_sim.swarms.churn import ChurnModel, Exponential
from hivemind_sim.swarms.dht_swarm import DHTSwarm

SHORT_DOWNTIMES = ChurnModel(session=Exponential(60), downtime=Exponential(0.05), graceful_fraction=0.8)


async def store_records(swarm: DHTSwarm, count: int = 50) -> None:
    """Records for every peer to hand on, so that each graceful leave takes a while."""
    writer = swarm.live[0]
    items = [StoreItem(f"key{i}", i, writer.now() + 3600) for i in range(count)]
    assert all(await writer.store_many(items))


def churn_for_700_seconds(seed: int) -> tuple[str, set[str], set[str]]:
    """30 peers churning with 50 ms mean downtimes: (digest, peers up, peers churn wants up)."""
    with Simulation(seed=seed, topology=Topology.world_regions()) as sim:
        swarm = DHTSwarm(sim)

        async def main() -> tuple[set[str], set[str]]:
            await swarm.grow(30, concurrency=5)
            await store_records(swarm)
            until = sim.now + 700
            swarm.churn(SHORT_DOWNTIMES, until=until)
            await asyncio.sleep(until + 1 - sim.now)  # the length of the run, in virtual time
            await swarm.settle()
            up, wanted = set(swarm.nodes), set(swarm.identities) - swarm.departed
            await swarm.stop()
            return up, wanted

        up, wanted = sim.run(main())
        return sim.digest(), up, wanted


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # an un-retrieved task exception is only logged when the task is collected
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def test_short_downtimes_after_graceful_leaves_bring_every_peer_back(caplog) -> None:
    caplog.set_level(logging.ERROR)
    digest, up, wanted = churn_for_700_seconds(seed=1)
    assert errors_logged(caplog) == []
    assert len(wanted) >= 28, f"the run should end with almost every peer up, not {len(wanted)}"
    assert up == wanted, (
        f"down but should be up: {sorted(wanted - up)}; up but should be down: {sorted(up - wanted)}"
    )
    again, _, _ = churn_for_700_seconds(seed=1)
    assert again == digest, "the same seed must give the same trace"


def watch_sends(sim: Simulation, address: str) -> asyncio.Event:
    """An event set when ``address`` next puts a frame on the wire."""
    sent = asyncio.Event()
    send = sim.network.send

    def spy(src: str, dst: str, frame: bytes) -> None:
        if src == address:
            sent.set()
        send(src, dst, frame)

    sim.network.send = spy  # type: ignore[method-assign]
    return sent


def test_a_rejoin_during_a_graceful_leave_waits_for_the_leave(caplog) -> None:
    caplog.set_level(logging.ERROR)
    with Simulation(seed=2, topology=Topology.world_regions()) as sim:
        swarm = DHTSwarm(sim)

        async def main() -> None:
            await swarm.grow(10, concurrency=5)
            await store_records(swarm)
            address = swarm.live[3].endpoint
            assert address is not None
            handing_off = watch_sends(sim, address)
            leaving = sim.loop.create_task(swarm.shut_down(address))
            await handing_off.wait()
            node = await swarm.rejoin(address)
            assert leaving.done() and leaving.exception() is None
            assert swarm.nodes[address] is node
            found = await node.get("key7")
            assert found is not None and found.value == 7
            await swarm.stop()

        sim.run(main())
    assert errors_logged(caplog) == []


def test_a_crash_cuts_a_graceful_leave_short_and_the_peer_comes_back(caplog) -> None:
    caplog.set_level(logging.ERROR)
    with Simulation(seed=3, topology=Topology.world_regions()) as sim:
        swarm = DHTSwarm(sim)

        async def main() -> None:
            await swarm.grow(10, concurrency=5)
            await store_records(swarm)
            address = swarm.live[3].endpoint
            assert address is not None
            sim.network.partition([[address]])  # its hand-off can reach nobody: it would take seconds
            handing_off = watch_sends(sim, address)
            leaving = sim.loop.create_task(swarm.shut_down(address))
            await handing_off.wait()
            crashed_at = sim.now
            await swarm.crash(address)
            assert leaving.done() and leaving.exception() is None
            assert sim.now - crashed_at < 0.5, "the crash must end the hand-off at once"
            sim.network.heal()
            node = await swarm.rejoin(address)
            found = await node.get("key7")
            assert found is not None and found.value == 7
            await swarm.stop()

        sim.run(main())
    assert errors_logged(caplog) == []
