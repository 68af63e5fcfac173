"""Identifiers, the XOR metric, and the Kademlia routing table (k-buckets, replacements, subnets)."""

from __future__ import annotations

import random

import pytest

from hivemind_core.dht.identity import Identity
from hivemind_core.dht.ids import (
    ID_BITS,
    ID_BYTES,
    ID_SPACE,
    MAX_KEY_DEPTH,
    deserialize_key,
    distance,
    id_from_bytes,
    id_to_bytes,
    key_id,
    node_id_for,
    serialize_key,
)
from hivemind_core.dht.routing import Contact, RoutingTable, subnet_of

HALF = ID_SPACE // 2


def contact(node_id: int, endpoint: str | None = None) -> Contact:
    """A contact on loopback (exempt from the subnet limit) unless an endpoint is given."""
    return Contact(node_id, endpoint or f"127.0.0.1:{1000 + node_id % 60000}", b"pk")


def ids_of(contacts) -> list[int]:
    return [c.node_id for c in contacts]


# ---- ids and the XOR metric ---------------------------------------------------------------


def test_xor_metric_properties() -> None:
    """Identity, symmetry, triangle inequality and unidirectionality on seeded random ids."""
    rng = random.Random(1)
    ids = [rng.getrandbits(ID_BITS) for _ in range(60)]
    for a in ids:
        assert distance(a, a) == 0
        for b in ids[:15]:
            assert distance(a, b) == distance(b, a)
            assert (distance(a, b) == 0) == (a == b)
            for c in ids[:8]:
                assert distance(a, c) <= distance(a, b) + distance(b, c)
    # unidirectionality: for a point and a distance there is exactly one id at that distance
    a = ids[0]
    at_distance = {distance(a, b): b for b in ids}
    assert len(at_distance) == len(set(ids))
    assert all(distance(a, d) == b for d, b in at_distance.items())


def test_xor_distance_orders_by_longest_common_prefix() -> None:
    """An id sharing a longer prefix with the target is always nearer."""
    target = 0b1011 << (ID_BITS - 4)
    near = target | 1  # shares 159 leading bits
    far = target ^ (1 << (ID_BITS - 1))  # differs in the top bit
    assert distance(target, near) < distance(target, far)
    assert distance(target, far) >= HALF


def test_id_bytes_round_trip() -> None:
    rng = random.Random(2)
    for value in [0, 1, ID_SPACE - 1, *(rng.getrandbits(ID_BITS) for _ in range(50))]:
        data = id_to_bytes(value)
        assert isinstance(data, bytes) and len(data) == ID_BYTES
        assert id_from_bytes(data) == value
    assert id_to_bytes(1) == b"\x00" * (ID_BYTES - 1) + b"\x01", "ids are big-endian"


@pytest.mark.parametrize("data", [b"", b"\x00" * (ID_BYTES - 1), b"\x00" * (ID_BYTES + 1)])
def test_id_from_bytes_rejects_wrong_length(data: bytes) -> None:
    with pytest.raises(ValueError, match=rf"{ID_BYTES} bytes, got {len(data)}"):
        id_from_bytes(data)


def test_id_from_bytes_rejects_non_bytes() -> None:
    with pytest.raises(ValueError, match="got bytearray"):
        id_from_bytes(bytearray(ID_BYTES))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got str"):
        id_from_bytes("x" * ID_BYTES)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [ID_SPACE, -1])
def test_id_to_bytes_rejects_ids_outside_the_space(value: int) -> None:
    with pytest.raises(OverflowError):
        id_to_bytes(value)


@pytest.mark.parametrize("key", [1.5, None, {"a": 1}, {1, 2}, bytearray(b"x")])
def test_serialize_key_rejects_unsupported_types(key: object) -> None:
    with pytest.raises(TypeError, match=rf"str, bytes, int or tuples.*got {type(key).__name__}"):
        serialize_key(key)


def test_serialize_key_is_canonical_and_distinguishes_types() -> None:
    """Equal keys give equal bytes; str, bytes and int keys never collide."""
    assert serialize_key("expert.0") == serialize_key("expert." + "0")
    encoded = {serialize_key(k) for k in ["1", b"1", 1, ("1",)]}
    assert len(encoded) == 4
    assert key_id(serialize_key("a")) != key_id(serialize_key("b"))
    assert 0 <= key_id(serialize_key("a")) < ID_SPACE


@pytest.mark.parametrize("key", [("a", 1.5), ("a", None), ("a", {"b": 1}), ["a", [2.0]]])
def test_serialize_key_rejects_unsupported_items_inside_tuples(key: object) -> None:
    with pytest.raises(TypeError, match="DHT keys and subkeys must be str, bytes, int or tuples"):
        serialize_key(key)


def test_list_keys_are_refused_so_they_cannot_alias_tuples() -> None:
    """msgpack packs lists and tuples alike: accepting both made ``["a", 1]`` and ``("a", 1)`` one key."""
    for key in (["a", 1], ("a", ["b"]), []):
        with pytest.raises(TypeError, match=r"got list \(use a tuple"):
            serialize_key(key)
    assert deserialize_key(serialize_key(("a", (1, b"x")))) == ("a", (1, b"x"))


def nested(depth: int) -> object:
    key: object = "leaf"
    for _ in range(depth):
        key = (key,)
    return key


def test_deeply_nested_keys_are_refused_naming_the_limit() -> None:
    assert deserialize_key(serialize_key(nested(MAX_KEY_DEPTH))) == nested(MAX_KEY_DEPTH)
    for depth in (MAX_KEY_DEPTH + 1, 5000):
        with pytest.raises(ValueError, match=rf"at most {MAX_KEY_DEPTH} deep"):
            serialize_key(nested(depth))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x91" * 5000 + b"\x00", "StackError"),  # an array nested 5,000 deep
        (b"\xcb" + bytes(8), "got float"),
        (b"\xcc\x01", "canonical"),  # 1 as uint8, where 1 has a one-byte encoding
        (b"\xa1\xff", "UnicodeDecodeError"),
        (b"\x81\xa1a\x01", "got dict"),
        (b"\xc1", "FormatError"),
        (b"", "incomplete"),
        (b"\x01\x02", "ExtraData"),
    ],
)
def test_deserialize_key_accepts_only_what_serialize_key_makes(data: bytes, problem: str) -> None:
    """Bytes from another peer: anything but a canonical key is a ValueError naming the problem."""
    with pytest.raises(ValueError, match=problem):
        deserialize_key(data)


def test_serialize_key_rejects_huge_ints_with_type_error() -> None:
    with pytest.raises(TypeError, match="must fit in 64 bits"):
        serialize_key(2**64)
    assert serialize_key(2**64 - 1) and serialize_key(-(2**63))


def test_node_id_for_is_deterministic() -> None:
    key = bytes(range(32))
    assert node_id_for(key) == node_id_for(bytes(range(32)))
    assert node_id_for(key) != node_id_for(bytes(range(1, 33)))
    assert 0 <= node_id_for(key) < ID_SPACE
    # identities from the same seed get the same id, and the id is the hash of the public key
    first, again = Identity.generate(random.Random(7)), Identity.generate(random.Random(7))
    assert first.node_id == again.node_id == node_id_for(first.public_key)
    assert Identity.generate(random.Random(8)).node_id != first.node_id


def test_node_ids_and_key_ids_use_separate_hashes() -> None:
    """The same bytes as a public key and as a key land in different places."""
    data = b"\x01" * 32
    assert node_id_for(data) != key_id(data)


# ---- routing table: buckets ---------------------------------------------------------------


def assert_buckets_partition_space(table: RoutingTable) -> None:
    assert table.buckets[0].lower == 0 and table.buckets[-1].upper == ID_SPACE
    for left, right in zip(table.buckets, table.buckets[1:], strict=False):
        assert left.upper == right.lower
    for bucket in table.buckets:
        assert len(bucket.contacts) <= table.k
        assert all(bucket.covers(node_id) for node_id in bucket.contacts)


def test_bucket_covering_own_id_splits_when_full() -> None:
    """Contacts near our own id are all kept: that bucket splits instead of refusing them."""
    table = RoutingTable(0, k=2)
    for node_id in [1, 2, 3, 4, 5]:
        assert table.add(contact(node_id), now=0.0) is None
    assert table.add(contact(6), now=0.0) == contact(4), "[4, 8) does not hold our id: it is capped"
    assert_buckets_partition_space(table)
    assert len(table.buckets) > 1
    own = table.bucket_for(0)
    assert own.upper - own.lower <= 2, "the bucket holding our id split down to the smallest ranges"
    # [0, 2): {1}, [2, 4): {2, 3}, [4, 8): {4, 5}
    assert ids_of(table) == [1, 2, 3, 4, 5]
    assert len(table) > table.k


def test_far_bucket_caps_at_k_and_never_splits() -> None:
    table = RoutingTable(0, k=3)
    far = [HALF + i for i in range(10)]  # all in the half of the space without our id
    for node_id in far:
        table.add(contact(node_id), now=0.0)
    assert_buckets_partition_space(table)
    assert [(b.lower, b.upper) for b in table.buckets] == [(0, HALF), (HALF, ID_SPACE)]
    assert ids_of(table) == far[:3], "the first k contacts stay: Kademlia prefers long-lived ones"
    assert len(table) == 3


def test_full_far_bucket_caches_newcomer_and_returns_least_recently_seen() -> None:
    table = RoutingTable(0, k=2)
    a, b, c = contact(HALF + 1), contact(HALF + 2), contact(HALF + 3)
    assert table.add(a, now=0.0) is None
    assert table.add(b, now=0.0) is None
    assert table.add(c, now=1.0) == a
    assert c.node_id not in table and table.get(c.node_id) is None
    bucket = table.bucket_for(c.node_id)
    assert list(bucket.replacements) == [c.node_id]
    assert list(bucket.contacts) == [a.node_id, b.node_id]


def test_re_adding_a_contact_makes_it_most_recently_seen() -> None:
    table = RoutingTable(0, k=2)
    a, b = contact(HALF + 1), contact(HALF + 2)
    table.add(a, now=0.0)
    table.add(b, now=0.0)
    assert table.add(a, now=1.0) is None  # a is alive again
    assert list(table.bucket_for(a.node_id).contacts) == [b.node_id, a.node_id]
    assert table.add(contact(HALF + 3), now=2.0) == b, "b is now the least recently seen"
    # an updated endpoint replaces the old one
    moved = Contact(a.node_id, "127.0.0.1:9", b"pk")
    table.add(moved, now=3.0)
    assert table.get(a.node_id) == moved


def test_replacement_cache_is_bounded_and_keeps_the_newest() -> None:
    table = RoutingTable(0, k=1, replacement_size=2)
    table.add(contact(HALF), now=0.0)
    for i in range(1, 6):
        table.add(contact(HALF + i), now=0.0)
    assert list(table.bucket_for(HALF).replacements) == [HALF + 4, HALF + 5]


def test_remove_promotes_most_recent_replacement() -> None:
    table = RoutingTable(0, k=2)
    a, b, r1, r2 = (contact(HALF + i) for i in range(1, 5))
    for c in (a, b, r1, r2):
        table.add(c, now=0.0)
    table.remove(a.node_id)
    assert a.node_id not in table
    assert ids_of(table) == [b.node_id, r2.node_id]
    assert list(table.bucket_for(HALF).replacements) == [r1.node_id]
    table.remove(b.node_id)
    assert ids_of(table) == [r2.node_id, r1.node_id]
    table.remove(r2.node_id)
    assert ids_of(table) == [r1.node_id], "with no replacements left, the bucket just shrinks"
    table.remove(12345)  # unknown ids are ignored
    assert len(table) == 1


def test_remove_of_a_replacement_forgets_it() -> None:
    table = RoutingTable(0, k=1)
    a, r = contact(HALF + 1), contact(HALF + 2)
    table.add(a, now=0.0)
    table.add(r, now=0.0)
    table.remove(r.node_id)
    table.remove(a.node_id)
    assert len(table) == 0, "the removed replacement must not be promoted"


def test_own_id_is_never_added() -> None:
    table = RoutingTable(42, k=2)
    assert table.add(contact(42), now=0.0) is None
    assert len(table) == 0 and 42 not in table


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        RoutingTable(0, k=0)


# ---- routing table: nearest ---------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4, 20])
def test_nearest_matches_brute_force(k: int) -> None:
    rng = random.Random(100 + k)
    own = rng.getrandbits(ID_BITS)
    table = RoutingTable(own, k=k)
    for _ in range(600):
        table.add(contact(rng.getrandbits(ID_BITS)), now=0.0)
    # a few ids right next to our own, so the table has deep buckets too
    for i in range(1, 30):
        table.add(contact(own ^ i), now=0.0)
    everyone = list(table)
    assert len(everyone) == len(table) > 3 * k
    targets = [rng.getrandbits(ID_BITS) for _ in range(40)] + [own, own ^ 1, everyone[0].node_id, 0]
    for target in targets:
        ranked = sorted(everyone, key=lambda c, t=target: c.node_id ^ t)
        for count in (0, 1, 3, k, 2 * k + 1, len(everyone) + 5):
            assert table.nearest(target, count) == ranked[:count]
        excluded = ranked[0].node_id
        assert table.nearest(target, k, exclude=excluded) == ranked[1 : k + 1]


def test_nearest_on_empty_table() -> None:
    assert RoutingTable(5).nearest(7, 10) == []


# ---- routing table: staleness ---------------------------------------------------------------


def test_stale_buckets() -> None:
    table = RoutingTable(0, k=2)
    table.add(contact(HALF + 1), now=0.0)
    table.add(contact(HALF + 2), now=0.0)
    table.add(contact(HALF + 3), now=10.0)  # splits the full root bucket at t=10
    assert len(table.buckets) == 2
    near, far = table.buckets
    table.add(contact(1), now=100.0)
    assert (near.last_updated, far.last_updated) == (100.0, 10.0)
    assert table.stale_buckets(now=150.0, max_age=60.0) == [far]
    assert table.stale_buckets(now=150.0, max_age=140.0) == [], "exactly max_age old is not stale"
    assert table.stale_buckets(now=200.0, max_age=60.0) == [near, far]
    assert table.stale_buckets(now=200.0, max_age=1000.0) == []


# ---- routing table: subnet limit (RFC 5737 documentation addresses only) -----------------------


def test_subnet_limit_caps_contacts_per_slash_24() -> None:
    table = RoutingTable(0, k=20, max_per_subnet=2)
    assert table.add(contact(HALF + 1, "192.0.2.1:4000"), now=0.0) is None
    assert table.add(contact(HALF + 2, "192.0.2.2:4000"), now=0.0) is None
    assert table.add(contact(HALF + 3, "192.0.2.3:4000"), now=0.0) is None
    assert HALF + 3 not in table, "a third contact from 192.0.2.0/24 is refused"
    assert HALF + 3 not in table.bucket_for(HALF + 3).replacements
    table.add(contact(HALF + 4, "198.51.100.1:4000"), now=0.0)
    table.add(contact(HALF + 5, "203.0.113.1:4000"), now=0.0)
    table.add(contact(HALF + 6, "203.0.113.2:4001"), now=0.0)
    assert ids_of(table) == [HALF + 1, HALF + 2, HALF + 4, HALF + 5, HALF + 6]
    # re-adding a known contact is not a new contact from a full subnet
    table.add(contact(HALF + 1, "192.0.2.1:4000"), now=1.0)
    assert ids_of(table)[-1] == HALF + 1
    # once one leaves, there is room for another from that subnet
    table.remove(HALF + 2)
    table.add(contact(HALF + 3, "192.0.2.3:4000"), now=2.0)
    assert HALF + 3 in table


def test_subnet_limit_is_per_bucket() -> None:
    table = RoutingTable(0, k=3, max_per_subnet=2)
    for i in range(4):  # four far contacts on loopback split the root bucket
        table.add(contact(HALF + i), now=0.0)
    for i in range(4):
        table.remove(HALF + i)
    assert len(table.buckets) == 2 and len(table) == 0
    for i in range(1, 4):
        table.add(contact(i, f"192.0.2.{i}:1"), now=0.0)  # near bucket
        table.add(contact(HALF + 10 + i, f"192.0.2.{10 + i}:1"), now=0.0)  # far bucket
    assert ids_of(table) == [1, 2, HALF + 11, HALF + 12], "two from 192.0.2.0/24 in each bucket"


def test_loopback_and_names_are_exempt_from_subnet_limit() -> None:
    table = RoutingTable(0, k=20, max_per_subnet=2)
    for i in range(1, 6):
        table.add(contact(HALF + i, f"127.0.0.{i}:5000"), now=0.0)
        table.add(contact(HALF + 10 + i, f"[::1]:{5000 + i}"), now=0.0)
        table.add(contact(HALF + 20 + i, f"peer{i}.example:5000"), now=0.0)
    assert len(table) == 15


def test_subnet_limit_disabled_with_none() -> None:
    table = RoutingTable(0, k=20, max_per_subnet=None)
    for i in range(1, 8):
        table.add(contact(HALF + i, f"198.51.100.{i}:4000"), now=0.0)
    assert len(table) == 7


def test_remove_skips_replacements_from_a_full_subnet() -> None:
    """A promoted replacement must respect the subnet limit too."""
    table = RoutingTable(0, k=2, max_per_subnet=1)
    a = contact(HALF + 1, "192.0.2.1:1")
    b = contact(HALF + 2, "198.51.100.1:1")
    table.add(a, now=0.0)
    table.add(b, now=0.0)
    allowed = contact(HALF + 3)  # loopback
    blocked = contact(HALF + 4, "203.0.113.2:1")
    assert table.add(allowed, now=0.0) == a
    assert table.add(blocked, now=0.0) == a  # 203.0.113.0/24 had no contact in the bucket yet
    assert table.add(contact(HALF + 5, "198.51.100.2:1"), now=0.0) is None, "refused: b holds that /24"
    assert list(table.bucket_for(HALF).replacements) == [allowed.node_id, blocked.node_id]
    table.add(Contact(b.node_id, "203.0.113.3:1", b"pk"), now=1.0)  # b moved into blocked's /24
    table.remove(a.node_id)
    assert ids_of(table) == [b.node_id, allowed.node_id], "the newest replacement would break the limit"
    assert list(table.bucket_for(HALF).replacements) == [blocked.node_id]


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("192.0.2.7:8080", "192.0.2.0/24"),
        ("198.51.100.255:1", "198.51.100.0/24"),
        ("203.0.113.9:65535", "203.0.113.0/24"),
        ("[2001:db8:1:2:3:4:5:6]:80", "2001:db8:1:2::/64"),
        ("[2001:db8::1]:80", "2001:db8::/64"),
        ("127.0.0.1:80", None),
        ("127.1.2.3:80", None),
        ("[::1]:80", None),
        ("localhost:80", None),
        ("peer.example:443", None),
    ],
)
def test_subnet_of(endpoint: str, expected: str | None) -> None:
    assert subnet_of(endpoint) == expected


def test_subnet_of_ipv4_mapped_addresses_uses_the_ipv4_subnet() -> None:
    assert subnet_of("[::ffff:192.0.2.1]:80") == "192.0.2.0/24"
    assert subnet_of("[::ffff:198.51.100.1]:80") == "198.51.100.0/24"
    assert subnet_of("[::ffff:127.0.0.1]:80") is None


def test_tables_share_one_copy_of_each_contact_and_keep_the_latest_endpoint() -> None:
    """Equal contacts decoded by different nodes are stored as one object (memory: a simulated
    swarm holds a hundred copies of each peer otherwise); a new endpoint still replaces the old."""
    first, second = RoutingTable(1, k=4), RoutingTable(2, k=4)
    first.add(Contact(HALF + 1, "127.0.0.1:7000", b"pk"), now=0.0)
    second.add(Contact(HALF + 1, "127.0.0.1:7000", b"pk"), now=0.0)
    assert first.get(HALF + 1) is second.get(HALF + 1)
    second.add(Contact(HALF + 1, "127.0.0.1:7001", b"pk"), now=1.0)
    assert second.get(HALF + 1).endpoint == "127.0.0.1:7001"
    assert first.get(HALF + 1).endpoint == "127.0.0.1:7000", "another table's contact is its own"
