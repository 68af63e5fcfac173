"""What a DHT node accepts: expirations, storage quotas, key shapes and undecodable values.

Each limit is checked where a record enters: the local ``store``, the ``dht.store`` RPC from
other peers, and the answers lookups bring back.
"""

from __future__ import annotations

import logging
import math

import msgpack
import pytest

from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.dht.codec import decode_entry, encode_record
from hivemind_core.dht.ids import MAX_KEY_DEPTH, key_id, serialize_key
from hivemind_core.dht.storage import RECORD_OVERHEAD, DHTRecord, LocalStorage, source_of
from hivemind_core.moe.declare import declare_experts
from hivemind_core.moe.uid import expand_pattern

DEFAULTS = DHTConfig()
FAR_AHEAD = DEFAULTS.max_ttl + DEFAULTS.max_clock_skew


async def small_network(world, size: int, **options) -> list[DHTNode]:
    nodes = [await world.dht(**options)]
    for _ in range(1, size):
        nodes.append(await world.dht([nodes[0].endpoint], **options))
    return nodes


async def store_raw(sender: DHTNode, receiver: DHTNode, *records: DHTRecord, is_cache: bool = False) -> list:
    """Send records as they are (no local checks) and return the receiver's [stored, reason] list."""
    body = [sender.calls.me(), [encode_record(record, is_cache) for record in records]]
    _, results = await sender.rpc.call(receiver.endpoint, "dht.store", body, timeout=10)
    return results


def record(key: object, value: object, expiration: float, subkey: object = None) -> DHTRecord:
    packed_subkey = None if subkey is None else serialize_key(subkey)
    return DHTRecord(serialize_key(key), packed_subkey, msgpack.packb(value), expiration)


# ---- expirations ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_store_refuses_expirations_beyond_max_ttl(world) -> None:
    [node] = await small_network(world, 1)
    now = node.now()
    assert await node.store("fine", 1, now + DEFAULTS.max_ttl - 1)
    for expiration in (now + DEFAULTS.max_ttl + 10, now + 31 * 365 * 86400, 2**64 - 1, 1e308):
        with pytest.raises(ValueError, match=r"ahead of the clock; the limit is 86400 s \(max_ttl\)"):
            await node.store("too far", 1, expiration)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "expiration", [math.nan, math.inf, -math.inf, 10**400], ids=["nan", "inf", "-inf", "10**400"]
)
async def test_store_refuses_non_finite_expirations_by_name(world, expiration: float) -> None:
    [node] = await small_network(world, 1)
    with pytest.raises(ValueError, match="expiration_time must be a finite number"):
        await node.store("k", 1, expiration)


@pytest.mark.asyncio(loop_factories=["sim"])
@pytest.mark.parametrize("expiration", ["60", True, None])
async def test_store_refuses_expirations_that_are_not_numbers(world, expiration: object) -> None:
    [node] = await small_network(world, 1)
    with pytest.raises(TypeError, match="expiration_time must be a number"):
        await node.store("k", 1, expiration)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_receiver_refuses_records_expiring_too_far_ahead(world) -> None:
    sender, receiver = await small_network(world, 2)
    now = receiver.now()
    skewed = record("skewed", 1, now + DEFAULTS.max_ttl + DEFAULTS.max_clock_skew / 2)
    results = await store_raw(
        sender, receiver, skewed, record("far", 1, now + FAR_AHEAD + 60), record("forever", 1, 2**64 - 1)
    )
    assert results[0] == [True, None], "a writer whose clock runs a little ahead is believed"
    for stored, reason in results[1:]:
        assert stored is False and "the limit is 86700 s (max_ttl + max_clock_skew)" in reason
    assert receiver.storage.get(key_id(serialize_key("forever")), now) is None


@pytest.mark.asyncio
async def test_lookups_ignore_records_expiring_too_far_ahead(world) -> None:
    nodes = await small_network(world, 4)
    liar, reader = nodes[1], nodes[3]
    now = liar.now()
    for key, expiration in (("pinned", 2**64 - 1), ("far", now + FAR_AHEAD + 60)):
        assert liar.storage.store(key_id(serialize_key(key)), record(key, "stale", expiration), now)
        assert await reader.get(key, latest=True) is None
    assert liar.storage.store(key_id(serialize_key("ok")), record("ok", "fresh", now + 60), now)
    found = await reader.get("ok", latest=True)
    assert found is not None and found.value == "fresh"


def test_find_answers_with_non_finite_expirations_are_refused_by_the_codec() -> None:
    for expiration in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            decode_entry([b"k", b"v", expiration, None], "entry")
        with pytest.raises(ValueError, match=r"subkeys\[0\]"):
            decode_entry([b"k", None, 1.0, [[b"s", b"v", expiration]]], "entry")


# ---- storage quotas ---------------------------------------------------------------------------

VALUE = b"x" * 1000


def sized(i: int, expiration: float = 100.0, subkey: object = None, key: object = None) -> DHTRecord:
    return record(f"k{i}" if key is None else key, VALUE, expiration, subkey)


SIZE = len(serialize_key("k0")) + len(msgpack.packb(VALUE)) + RECORD_OVERHEAD


def test_replicas_refuse_new_records_when_full_and_keep_what_they_hold() -> None:
    storage = LocalStorage(max_bytes=10 * SIZE)
    for i in range(10):
        assert storage.store(key_id(sized(i).key), sized(i), now=0.0, source=f"peer{i}")
    reason = storage.put(key_id(sized(10).key), sized(10), now=0.0, source="peer10")
    assert reason is not None and reason.startswith("storage is full")
    assert storage.put(key_id(sized(10).key), sized(10), now=0.0) is not None, "full for this node too"
    assert len(storage) == 10 and storage.bytes_used == 10 * SIZE, "nothing held was evicted"
    # re-announcing what is held, or renewing it, never needs more room
    assert storage.store(key_id(sized(3).key), sized(3), now=0.0, source="peer3")
    assert storage.store(key_id(sized(3).key), sized(3, expiration=200.0), now=0.0, source="peer3")
    # once records expire, their room is free again
    storage.remove_expired(now=100.0)
    assert len(storage) == 1 and storage.bytes_used == SIZE
    assert storage.store(key_id(sized(10).key), sized(10, expiration=300.0), now=100.0, source="peer10")


def test_one_source_gets_its_share_and_others_keep_storing() -> None:
    storage = LocalStorage(max_bytes=100 * SIZE, max_bytes_per_source=5 * SIZE)
    for i in range(5):
        assert storage.store(key_id(sized(i).key), sized(i), now=0.0, source="flood")
    reason = storage.put(key_id(sized(5).key), sized(5), now=0.0, source="flood")
    assert reason == f"flood already has {5 * SIZE} bytes stored here; the limit per source is {5 * SIZE}"
    assert storage.bytes_from("flood") == 5 * SIZE
    assert storage.store(key_id(sized(5).key), sized(5), now=0.0, source="honest")
    assert storage.store(key_id(sized(6).key), sized(6), now=0.0), "this node's own writes are not a source"
    # a newer version of a record moves its charge to whoever brought it
    assert storage.store(key_id(sized(0).key), sized(0, expiration=200.0), now=0.0, source="honest")
    assert storage.bytes_from("flood") == 4 * SIZE and storage.bytes_from("honest") == 2 * SIZE
    assert storage.store(key_id(sized(7).key), sized(7), now=0.0, source="flood")


def test_subkeys_per_key_are_capped_but_held_subkeys_stay_renewable() -> None:
    storage = LocalStorage(max_subkeys=3)
    kid = key_id(serialize_key("prefix"))
    for i in range(3):
        assert storage.store(kid, sized(0, subkey=i, key="prefix", expiration=10.0 + i), now=0.0)
    reason = storage.put(kid, sized(0, subkey=3, key="prefix"), now=0.0, source="a")
    assert reason == "this key already holds 3 subkeys, the limit"
    assert storage.store(kid, sized(0, subkey=1, key="prefix", expiration=50.0), now=0.0, source="a")
    entry = storage.get(kid, now=10.5)  # subkey 0 has expired: there is room for a new one
    assert entry is not None and entry.subkeys is not None and len(entry.subkeys) == 2
    assert storage.store(kid, sized(0, subkey=3, key="prefix"), now=10.5, source="a")


def test_bytes_per_key_are_capped() -> None:
    storage = LocalStorage(max_entry_bytes=2 * SIZE + 4)  # two records with one-letter subkeys
    kid = key_id(serialize_key("k0"))
    assert storage.store(kid, sized(0, subkey="a"), now=0.0)
    reason = storage.put(kid, sized(0, subkey="bb"), now=0.0)
    assert reason == f"this key would hold more than the {2 * SIZE + 4}-byte limit for one key"
    assert storage.store(kid, sized(0, subkey="b"), now=0.0)


def test_a_cache_forgets_its_oldest_copies_to_make_room() -> None:
    cache = LocalStorage(max_bytes=3 * SIZE, evict=True)
    for i in range(5):
        assert cache.store(key_id(sized(i).key), sized(i), now=0.0, source="s")
    assert [kid for kid, _ in cache.items(0.0)] == [key_id(sized(i).key) for i in (2, 3, 4)]
    assert cache.bytes_used == 3 * SIZE and cache.bytes_from("s") == 3 * SIZE


def test_sources_are_addresses_grouped_like_the_routing_table() -> None:
    assert source_of("203.0.113.7:4000") == source_of("203.0.113.200:5000") == "203.0.113.0/24"
    assert source_of("[2001:db8::1]:4000") == source_of("[2001:db8::2]:9") == "2001:db8::/64"
    assert source_of("127.0.0.1:4000") == source_of("127.0.0.1:5000") == "127.0.0.1"
    assert source_of("peer7") == "peer7"


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_a_flooding_peer_gets_its_share_and_other_peers_keep_storing(world) -> None:
    """2,000 stores of 64 KiB from one peer grew a node by 117 MB before quotas: now its share."""
    config = DHTConfig(max_per_subnet=None, max_storage_bytes=4 << 20, max_bytes_per_source=1 << 20)
    victim, flooder, honest = await small_network(world, 3, config=config)
    big = b"x" * (60 * 1024)
    now = victim.now()
    refused = []
    for start in range(0, 64, 16):
        batch = [record(f"flood{i}", big, now + 60) for i in range(start, start + 16)]
        refused += [reason for stored, reason in await store_raw(flooder, victim, *batch) if not stored]
    assert refused and all("the limit per source is 1048576" in reason for reason in refused)
    assert victim.storage.bytes_from(source_of(flooder.endpoint)) <= 1 << 20
    # the same flood under one key fares no better
    subkeys = [record("one key", big, now + 60, subkey=i) for i in range(16)]
    assert not all(stored for stored, _ in await store_raw(flooder, victim, *subkeys))
    assert victim.storage.bytes_from(source_of(flooder.endpoint)) <= 1 << 20
    assert await honest.store("honest", big, now + 60)
    assert victim.storage.get(key_id(serialize_key("honest")), now) is not None


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_a_flood_over_tcp_is_refused_with_a_reason(world) -> None:
    config = DHTConfig(max_per_subnet=None, max_bytes_per_source=1 << 20)
    victim, flooder = await small_network(world, 2, config=config)
    now = victim.now()
    batch = [record(f"flood{i}", b"x" * (60 * 1024), now + 60) for i in range(32)]
    results = await store_raw(flooder, victim, *batch)
    assert [stored for stored, _ in results].count(True) == (1 << 20) // (60 * 1024 + RECORD_OVERHEAD + 16)
    assert "127.0.0.1 already has" in results[-1][1]
    assert victim.storage.bytes_used <= 1 << 20


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_default_limits_hold_an_expert_grid_of_thousands_of_coordinates(world) -> None:
    server, *_ = nodes = await small_network(world, 3)
    uids = expand_pattern("ffn.[0:4096]")
    assert await declare_experts(server, uids, server.endpoint, server.now() + 30)
    for node in nodes:
        found = await node.get("ffn.", latest=True)
        assert found is not None and len(found.value) == 4096


# ---- keys -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tuple_keys_and_subkeys_read_back_as_written(world) -> None:
    writer, reader = await small_network(world, 2)
    expiration = writer.now() + 60
    assert await writer.store(("grid", 1), "a", expiration, subkey=("x", 2))
    assert await writer.store(("grid", 1), "b", expiration, subkey="y")
    found = await reader.get(("grid", 1), latest=True)
    assert found is not None
    assert {subkey: item.value for subkey, item in found.value.items()} == {("x", 2): "a", "y": "b"}
    with pytest.raises(TypeError, match="use a tuple"):
        await writer.store(["grid", 1], "c", expiration)
    with pytest.raises(TypeError, match="use a tuple"):
        await writer.get(("grid", [1]))


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_keys_nested_too_deep_are_refused_naming_the_limit(world) -> None:
    [node] = await small_network(world, 1)
    key: object = "leaf"
    for _ in range(5000):
        key = (key,)
    with pytest.raises(ValueError, match=f"at most {MAX_KEY_DEPTH} deep"):
        await node.store(key, 1, node.now() + 60)
    with pytest.raises(ValueError, match=f"at most {MAX_KEY_DEPTH} deep"):
        await node.get(key)


@pytest.mark.asyncio
async def test_records_whose_keys_are_not_canonical_are_refused(world) -> None:
    sender, receiver = await small_network(world, 2)
    expiration = receiver.now() + 60
    float_key = DHTRecord(msgpack.packb(1.5), None, msgpack.packb(1), expiration)
    long_int = DHTRecord(b"\xcc\x01", None, msgpack.packb(1), expiration)  # 1, not in its shortest form
    dict_subkey = DHTRecord(serialize_key("k"), msgpack.packb({"a": 1}), msgpack.packb(1), expiration)
    results = await store_raw(sender, receiver, float_key, long_int, dict_subkey)
    assert [stored for stored, _ in results] == [False, False, False]
    assert "key: not a DHT key" in results[0][1] and "got float" in results[0][1]
    assert results[1][1] == "key: not a DHT key (not in canonical form)"
    assert results[2][1].startswith("subkey: not a DHT key")


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_values_that_would_not_read_back_are_refused_when_stored(world) -> None:
    [node] = await small_network(world, 1)
    with pytest.raises(TypeError, match="cannot encode and decode"):
        await node.store("int keys", {1: "a"}, node.now() + 60)  # msgpack reads maps with str keys only


# ---- undecodable values -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_value_that_is_not_msgpack_is_counted_and_logged(world, caplog) -> None:
    nodes = await small_network(world, 4)
    holder, reader = nodes[1], nodes[3]
    now = holder.now()
    broken = DHTRecord(serialize_key("broken"), None, b"\xc1", now + 60)
    assert holder.storage.store(key_id(broken.key), broken, now)
    kid = key_id(serialize_key("shared"))
    assert holder.storage.store(kid, record("shared", "good", now + 60, subkey="a"), now)
    assert holder.storage.store(
        kid, DHTRecord(serialize_key("shared"), serialize_key("b"), b"\xc1", now + 60), now
    )
    with caplog.at_level(logging.WARNING, logger="hivemind_core.dht.node"):
        assert await reader.get("broken", latest=True) is None
        shared = await reader.get("shared", latest=True)
    assert reader.stats.undecodable_values == 2
    assert [r for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert shared is not None and {s: v.value for s, v in shared.value.items()} == {"a": "good"}, (
        "one bad subkey does not hide the others"
    )


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_a_lookup_keeps_at_most_max_subkeys_of_what_an_answer_carries(world) -> None:
    writer = await world.dht()
    reader = await world.dht([writer.endpoint], config=DHTConfig(max_per_subnet=None, max_subkeys=4))
    now = writer.now()
    kid = key_id(serialize_key("crowded"))
    for i in range(10):  # more than a node configured like the reader would ever hold
        assert writer.storage.store(kid, record("crowded", i, now + 60, subkey=i), now)
    found = await reader.get("crowded", latest=True)
    assert found is not None and len(found.value) == 4
    many = [[serialize_key(i), b"v", 1.0] for i in range(10)]
    with pytest.raises(ValueError, match=r"entry has 10 subkeys; the limit is 4"):
        decode_entry([b"k", None, 1.0, many], "entry", max_subkeys=4)
