"""Hostile peers against a DHT node's request handling (issue 14, items 2, 3, 6, 10b, 10c).

Each attack once cost a node seconds of blocked event loop or gigabytes of memory: a find naming
one big entry hundreds of times, answers naming more contacts than were asked for, and a
hand-over to a newcomer scanning every key held inside the call that admitted it. The tests
measure what bounds them (sizes, counts, turns of the loop), never wall-clock time.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgpack
import pytest

from hivemind_core.dht import Contact, DHTNode, Identity
from hivemind_core.dht.codec import decode_entry, encode_node
from hivemind_core.dht.ids import ID_BYTES, key_id, node_id_for, serialize_key
from hivemind_core.dht.maintenance import HANDOVER_CHUNK, MAX_WAITING_NEWCOMERS
from hivemind_core.dht.storage import DHTRecord
from hivemind_core.net import RemoteError

BUDGET = 16 * 1024 * 1024
"""A find answer's default byte budget (``DHTConfig.max_answer_bytes``)."""
VALUE = 64 * 1024 - 64
"""A value as large as the default limit allows, with room for its msgpack header."""


def id_bytes(key: object) -> bytes:
    return key_id(serialize_key(key)).to_bytes(ID_BYTES, "big")


def hold(node: DHTNode, key: object, subkeys: int, value_size: int = VALUE) -> None:
    """Make ``node`` hold ``key`` as it would after stores from others (a dictionary if ``subkeys``)."""
    now, kid = node.now(), key_id(serialize_key(key))
    value = msgpack.packb(b"x" * value_size)
    for i in range(max(subkeys, 1)):
        subkey = serialize_key(i) if subkeys else None
        assert node.storage.store(kid, DHTRecord(serialize_key(key), subkey, value, now + 600), now)


async def find(world: Any, node: DHTNode, ids: list[bytes]) -> Any:
    """What ``node`` answers a client-mode peer asking dht.find about ``ids``."""
    rpc = await world.rpc(serve=False)
    me = encode_node(Identity.generate().public_key, None)
    return await rpc.call(node.endpoint, "dht.find", [me, ids, 20], timeout=30)


# ---- item 2: what one find request can make a node build ------------------------------------


@pytest.mark.asyncio
async def test_a_find_naming_one_id_many_times_is_refused_and_the_node_keeps_serving(world) -> None:
    victim = await world.dht()
    hold(victim, "big", subkeys=0)
    with pytest.raises(RemoteError, match=r"ids\[1\] repeats ids\[0\]"):
        await find(world, victim, [id_bytes("big")] * 500)  # was packed 500 times over
    _, _, [[entry, _]] = await find(world, victim, [id_bytes("big")])
    assert entry is not None and len(entry[1]) > VALUE, "the node still answers a well-formed find"


@pytest.mark.asyncio
async def test_a_find_answer_stays_within_its_byte_budget_and_readers_still_get_every_key(world) -> None:
    victim = await world.dht()
    keys = ["huge0", "huge1", "huge2"]
    for key in keys:
        hold(victim, key, subkeys=110)  # ~7 MiB each, just under the 8 MiB a key may hold
    answer = await find(world, victim, [id_bytes(key) for key in keys])
    assert len(msgpack.packb(answer, use_bin_type=True)) <= BUDGET  # 21 MiB before
    entries = [entry for entry, _ in answer[2]]
    assert sum(isinstance(entry, list) for entry in entries) == 2 and entries[2] is False, (
        "entries past the budget are left out and marked so"
    )
    reader = await world.dht([victim.endpoint])
    found = await reader.get_many(keys)  # asks again for what was left out
    assert [len(item.value) if item else None for item in found] == [110, 110, 110]


# ---- items 3 and 10b: what one find answer can make the requester decode ---------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("oversized", ["contacts", "indices"])
async def test_an_answer_naming_more_contacts_than_asked_for_is_refused_before_decoding(
    world, oversized: str
) -> None:
    holder = await world.dht()
    liar = await world.dht([holder.endpoint])
    reader = await world.dht([holder.endpoint])
    assert await holder.store("through a liar", "ok", holder.now() + 60)
    host = "127.0.0.1:" if world.kind == "tcp" else "phantom-"
    fakes = [f"{host}{port}" for port in range(1, 30_001 if oversized == "contacts" else 21)]
    rng = random.Random(0)
    junk = [encode_node(rng.randbytes(32), endpoint) for endpoint in fakes]  # keys need not be real

    async def lying_find(peer: str, body: Any) -> Any:
        indices = list(range(20)) if oversized == "contacts" else list(range(20)) * 250
        return [liar.calls.me(), junk, [[None, indices] for _ in body[1]]]

    liar.rpc.unregister("dht.find")
    liar.rpc.register("dht.find", lying_find)
    checked: list[str] = []
    check_endpoint = reader.rpc.transport.check_endpoint

    def counting_check(endpoint: str) -> None:
        checked.append(endpoint)
        check_endpoint(endpoint)

    reader.rpc.transport.check_endpoint = counting_check  # type: ignore[method-assign]
    found = await reader.get("through a liar", latest=True)
    assert found is not None and found.value == "ok"
    assert not set(checked) & set(fakes), "not one contact of the oversized answer was decoded"
    assert reader.membership.is_unresponsive(liar.node_id), "the answer counts as the liar's failure"


def test_an_entry_with_more_subkeys_than_a_node_holds_is_decoded_only_that_far() -> None:
    many = [[b"%d" % i, b"v", 1.0] for i in range(20_000)]
    entry = decode_entry([b"k", None, 1.0, many], "entry", first_subkeys=8192)
    assert entry.subkeys is not None and len(entry.subkeys) == 8192


# ---- item 6: hand-over to newcomers -----------------------------------------------------------


@pytest.mark.asyncio
async def test_a_hand_over_runs_in_the_background_in_chunks_and_reaches_the_newcomer(world) -> None:
    victim = await world.dht()
    now, count = victim.now(), 20 * HANDOVER_CHUNK
    for i in range(count):
        key = serialize_key(f"key{i}")
        assert victim.storage.store(key_id(key), DHTRecord(key, None, msgpack.packb(i), now + 600), now)
    identity = Identity.generate()
    newcomer_id = node_id_for(identity.public_key)
    expected = {
        serialize_key(f"key{i}")
        for i in range(count)
        if newcomer_id ^ key_id(serialize_key(f"key{i}")) < victim.node_id ^ key_id(serialize_key(f"key{i}"))
    }
    received: list[bytes] = []
    all_received = asyncio.Event()

    async def store(peer: str, body: Any) -> Any:
        received.extend(raw[0] for raw in body[1])
        if len(received) >= len(expected):
            all_received.set()
        return [encode_node(identity.public_key, rpc.endpoint), [[True, None]] * len(body[1])]

    rpc = await world.rpc({"dht.store": store})
    victim.membership.seen(Contact(newcomer_id, rpc.endpoint, identity.public_key))
    assert victim.maintenance.handover_backlog == 1, "the contact-seen call only queued the hand-over"
    turns = 0
    while victim.maintenance.handover_backlog and turns < 10 * count:
        await asyncio.sleep(0)  # one turn of the loop: the measure, not an ordering
        turns += 1
    assert turns >= count // HANDOVER_CHUNK - 1, f"the scan of {count} keys took only {turns} turns"
    await asyncio.wait_for(all_received.wait(), timeout=30)
    assert expected and sorted(received) == sorted(expected)


@pytest.mark.asyncio
async def test_newcomers_waiting_for_a_hand_over_are_bounded(world) -> None:
    victim = await world.dht()
    hold(victim, "one", subkeys=0, value_size=8)
    now = victim.now()
    for i in range(HANDOVER_CHUNK):  # more keys than a hand-over does at once
        key = serialize_key(i)
        assert victim.storage.store(key_id(key), DHTRecord(key, None, b"\x01", now + 600), now)
    host = "127.0.0.1:" if world.kind == "tcp" else "phantom-"
    for port in range(1, MAX_WAITING_NEWCOMERS + 37):
        public_key = Identity.generate().public_key
        victim.maintenance.newcomer(Contact(node_id_for(public_key), f"{host}{port}", public_key))
    assert victim.maintenance.handover_backlog == MAX_WAITING_NEWCOMERS
    assert victim.stats.handovers_skipped == 36
