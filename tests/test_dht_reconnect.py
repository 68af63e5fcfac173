"""Lost contacts: a node that loses every contact finds its way back, and a frozen peer is
remembered so that it costs one lookup its deadline, not every lookup."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from hivemind_core.dht import DHTConfig, DHTNode, key_id, serialize_key
from hivemind_core.dht.background import Background
from hivemind_core.dht.membership import MAX_UNRESPONSIVE, Membership
from hivemind_core.dht.routing import Contact
from hivemind_core.dht.stats import DHTStats
from hivemind_core.net import TcpConfig, TcpTransport

# ---- reconnecting ---------------------------------------------------------------------------


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_a_client_cut_off_from_every_contact_reconnects_by_itself(world, caplog) -> None:
    """A client-mode peer gets no requests that could refill its table: before, losing its
    contacts to one missed deadline left every later store False and every get None, for good."""
    server = await world.dht()
    await world.dht([server.endpoint])
    client = await world.dht([server.endpoint], client_mode=True)
    assert client.connected and len(client.routing_table) == 2
    network = world.sim.network
    network.partition([[client.rpc.transport.address]])  # frames to and from it are dropped
    with caplog.at_level(logging.WARNING, logger="hivemind_core.dht"):
        assert not await client.store("key", 1, client.now() + 600)
    assert not client.connected and client.stats.disconnections == 1
    assert "lost every contact" in caplog.text
    await asyncio.sleep(5)  # the partition lasts a few seconds
    network.heal()
    await asyncio.wait_for(client.wait_connected(), timeout=120)
    assert client.stats.reconnect_attempts >= 2, "it kept trying while cut off, then got through"
    assert client.stats.disconnections == 1
    assert await client.store("key", 2, client.now() + 600)
    found = await server.get("key")
    assert found is not None and found.value == 2


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_over_tcp_a_client_reconnects_when_its_initial_peer_restarts(world) -> None:
    server = await world.dht()
    client = await world.dht([server.endpoint], client_mode=True)
    endpoint = server.endpoint
    await server.shutdown(handoff_timeout=0)
    assert not await client.store("key", 1, client.now() + 600)
    assert not client.connected
    port = int(endpoint.rpartition(":")[2])
    restarted = await DHTNode.create(
        TcpTransport(TcpConfig(host="127.0.0.1", port=port)), config=DHTConfig(max_per_subnet=None)
    )
    world.dht_nodes.append(restarted)
    await asyncio.wait_for(client.wait_connected(), timeout=60)
    assert await client.store("key", 2, client.now() + 600)
    found = await restarted.get("key")
    assert found is not None and found.value == 2


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_reconnect_tries_back_off_up_to_the_limit(world) -> None:
    config = DHTConfig(max_per_subnet=None, reconnect_delay=1.0, reconnect_max_delay=8.0)
    server = await world.dht()
    client = await world.dht([server.endpoint], client_mode=True, config=config)
    world.sim.network.partition([[client.rpc.transport.address]])
    assert not await client.store("key", 1, client.now() + 600)
    await asyncio.sleep(120)
    # tries at once, then after ~1, 2, 4, 8, 8, ... s (jittered by half), each ping taking 3 s
    assert 8 <= client.stats.reconnect_attempts <= 16, client.stats.reconnect_attempts
    assert not client.connected
    world.sim.network.heal()
    await asyncio.wait_for(client.wait_connected(), timeout=30)


# ---- a frozen replica costs one lookup, not every lookup ------------------------------------


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_a_frozen_replica_makes_only_the_first_latest_read_wait(world) -> None:
    """``get_many(latest=True, timeout=1)`` asks every replica; a frozen one used to keep every
    such read waiting for its whole timeout (a training step's expert lookups, every step)."""
    nodes = [await world.dht()]
    for _ in range(7):
        nodes.append(await world.dht([nodes[0].endpoint]))
    reader = nodes[-1]
    assert await nodes[0].store("experts", "v1", nodes[0].now() + 600)
    target = key_id(serialize_key("experts"))
    frozen = next(n for n in nodes[:-1] if n.storage.get(target, n.now()) is not None)
    world.sim.network.partition([[frozen.rpc.transport.address]])  # like SIGSTOP: frames are dropped
    loop = asyncio.get_running_loop()
    waited = []
    for _ in range(5):
        started = loop.time()
        (found,) = await reader.get_many(["experts"], latest=True, timeout=1.0)
        waited.append(loop.time() - started)
        assert found is not None and found.value == "v1"
    assert waited[0] == pytest.approx(1.0, abs=0.01), waited
    assert max(waited[1:]) < 0.2, f"later reads skip the frozen replica: {waited}"
    world.sim.network.heal()


# ---- Membership's memory of unresponsive contacts -------------------------------------------


def membership(**config: Any) -> tuple[Membership, list[str]]:
    events: list[str] = []
    member = Membership(
        1,
        config=DHTConfig(max_per_subnet=None, **config),
        transport=None,  # type: ignore[arg-type]  # only needed to vet requesters
        background=Background(),
        stats=DHTStats(),
        ping=None,  # type: ignore[arg-type]  # buckets here never fill
        on_new_contact=lambda contact: events.append(f"new {contact.node_id}"),
        on_disconnected=lambda: events.append("disconnected"),
    )
    return member, events


def contact(node_id: int) -> Contact:
    return Contact(node_id, f"127.0.0.1:{node_id}", b"")


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_unresponsive_contacts_are_skipped_for_a_while_and_forgiven_when_heard_from() -> None:
    member, _ = membership(unresponsive_time=30.0)
    for node_id in (2, 3):
        member.seen(contact(node_id))
    member.unresponsive(contact(2))
    assert member.is_unresponsive(2) and not member.is_unresponsive(3)
    assert 2 in member.routing_table, "missing a deadline does not evict: only a failed RPC does"
    await asyncio.sleep(30)
    assert not member.is_unresponsive(2), "asked again once the time is up"
    member.unresponsive(contact(2))
    member.seen(contact(2))
    assert not member.is_unresponsive(2), "an answer forgives at once"


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_the_memory_of_unresponsive_contacts_is_bounded() -> None:
    member, _ = membership()
    for node_id in range(10, 10 + MAX_UNRESPONSIVE + 100):
        member.unresponsive(contact(node_id))
    assert len(member._unresponsive) == MAX_UNRESPONSIVE
    assert not member.is_unresponsive(10), "the longest remembered are forgotten first"
    assert member.is_unresponsive(10 + MAX_UNRESPONSIVE + 99)


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_expired_unresponsive_contacts_are_forgotten_when_the_next_is_added() -> None:
    """A swarm with churn keeps meeting dead peers: their entries must not pile up until the
    bound (a simulation holds one such memory per peer)."""
    member, _ = membership(unresponsive_time=30.0)
    for node_id in (2, 3):
        member.unresponsive(contact(node_id))
    await asyncio.sleep(31)
    member.unresponsive(contact(4))
    assert list(member._unresponsive) == [4]
    assert not member.is_unresponsive(2) and member.is_unresponsive(4)


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_a_peer_whose_only_contact_left_says_so_without_an_alarm(caplog) -> None:
    """A DHT peer whose one client went away is in a normal state: an info line, not a warning."""
    member, events = membership()
    member.seen(contact(2))
    with caplog.at_level(logging.INFO, logger="hivemind_core.dht"):
        member.failed(contact(2))
    assert events == ["new 2", "disconnected"]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "DHT node 1 has no contact now: its only one, 127.0.0.1:2, stopped answering")
    ]


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_losing_the_last_responsive_contact_disconnects_once_and_hearing_from_one_reconnects(
    caplog,
) -> None:
    member, events = membership()
    member.seen(contact(2))
    member.seen(contact(3))
    with caplog.at_level(logging.WARNING, logger="hivemind_core.dht"):
        member.failed(contact(2))
        assert member.connected and "disconnected" not in events
        member.unresponsive(contact(3))  # still in the table, but no longer answering
        assert not member.connected and events.count("disconnected") == 1
        member.failed(contact(3))
    assert events.count("disconnected") == 1 and member.stats.disconnections == 1
    assert len([r for r in caplog.records if "lost every contact" in r.getMessage()]) == 1
    waiting = asyncio.ensure_future(member.wait_connected())
    with pytest.raises(TimeoutError):  # still disconnected a (virtual) minute later
        await asyncio.wait_for(asyncio.shield(waiting), timeout=60)
    member.seen(contact(3))
    await asyncio.wait_for(waiting, timeout=1)
    assert member.connected and events[-1] == "new 3"
