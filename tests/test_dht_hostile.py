"""Peers that lie about where they are: a contact that cannot be dialled never poisons a node."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from hivemind_core.dht import DHTNode, Identity
from hivemind_core.dht.codec import encode_node
from hivemind_core.dht.ids import node_id_for

pytestmark = pytest.mark.asyncio

BAD_TCP_ENDPOINTS = ["127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:notaport", "127.0.0.1:", ":7000", "nohost"]


async def small_network(world: Any, size: int) -> list[DHTNode]:
    nodes = [await world.dht()]
    for _ in range(1, size):
        nodes.append(await world.dht([nodes[0].endpoint]))
    return nodes


@pytest.mark.asyncio(loop_factories=["tcp"])
@pytest.mark.parametrize("announced", BAD_TCP_ENDPOINTS)
async def test_a_ping_announcing_an_unusable_endpoint_does_not_poison_the_node(world, announced: str) -> None:
    nodes = await small_network(world, 4)
    victim = nodes[0]
    liar = Identity.generate()
    await nodes[1].rpc.call(victim.endpoint, "dht.ping", [encode_node(liar.public_key, announced)], timeout=5)
    assert node_id_for(liar.public_key) not in victim.routing_table
    # the victim still stores, finds, lets newcomers join and hands its records on when leaving
    assert await victim.store("after the lie", 1, victim.now() + 60)
    newcomer = await world.dht([victim.endpoint])
    assert (await newcomer.get("after the lie")).value == 1
    await victim.shutdown()
    assert (await nodes[2].get("after the lie")).value == 1


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_a_find_answer_full_of_unusable_contacts_costs_a_lookup_nothing(world, caplog) -> None:
    nodes = await small_network(world, 6)
    liar = nodes[5]
    junk = [encode_node(Identity.generate().public_key, endpoint) for endpoint in BAD_TCP_ENDPOINTS]

    async def lying_find(peer: str, body: Any) -> Any:
        _, ids, _ = body
        return [
            encode_node(liar.identity.public_key, liar.endpoint),
            junk,
            [[None, [0, 1, 2, 3, 4, 5]]] * len(ids),
        ]

    liar.rpc.unregister("dht.find")
    liar.rpc.register("dht.find", lying_find)
    reader = nodes[1]
    assert await nodes[2].store("through liars", "ok", nodes[2].now() + 60)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            found = await reader.get("through liars", latest=True)
            assert found is not None and found.value == "ok"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    for endpoint in BAD_TCP_ENDPOINTS:
        assert all(contact.endpoint != endpoint for contact in reader.routing_table)


async def test_a_lookup_survives_a_contact_whose_calls_raise(world) -> None:
    """Even a failure nobody foresaw (an ask that raises) costs one answer, not the lookup."""
    nodes = await small_network(world, 8)
    assert await nodes[3].store("robust", 7, nodes[3].now() + 60)
    reader = nodes[1]
    broken = next(iter(reader.routing_table)).node_id
    real_find = reader.calls.find

    async def find(contact, targets):
        if contact.node_id == broken:
            raise RuntimeError("a bug in one call")
        return await real_find(contact, targets)

    reader.calls.find = find  # type: ignore[method-assign]
    found = await reader.get("robust", latest=True)
    assert found is not None and found.value == 7


async def test_initial_peers_that_are_not_endpoints_are_refused_by_name(world) -> None:
    bad = "" if world.kind == "sim" else "127.0.0.1:0"
    with pytest.raises(ValueError, match="initial peer"):
        await world.dht([bad])
