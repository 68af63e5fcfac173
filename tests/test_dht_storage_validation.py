"""LocalStorage (expiration, plain values vs dictionaries, capacity) and record validators."""

from __future__ import annotations

import dataclasses
import random
import re

import msgpack
import pytest

from hivemind_core.dht.identity import Identity
from hivemind_core.dht.ids import deserialize_key, key_id, serialize_key
from hivemind_core.dht.storage import DHTRecord, LocalStorage
from hivemind_core.dht.validation import (
    RecordValidator,
    SignatureValidator,
    ValidatorChain,
    VerifiedSignatures,
)

KEY = serialize_key("experts")
KID = key_id(KEY)


def plain(value: bytes, expiration: float, key: bytes = KEY) -> DHTRecord:
    return DHTRecord(key, None, value, expiration)


def sub(subkey: str, value: bytes, expiration: float, key: bytes = KEY) -> DHTRecord:
    return DHTRecord(key, serialize_key(subkey), value, expiration)


def held(storage: LocalStorage, now: float, kid: int = KID) -> list[tuple[bytes | None, bytes, float]]:
    """What ``storage`` holds under ``kid`` as (subkey, value, expiration) triples."""
    entry = storage.get(kid, now)
    return [] if entry is None else [(r.subkey, r.value, r.expiration_time) for r in entry.records()]


# ---- LocalStorage ---------------------------------------------------------------------------


def test_expired_records_are_refused() -> None:
    storage = LocalStorage()
    assert storage.store(KID, plain(b"v", 10.0), now=10.0) is False, "expiring exactly now is expired"
    assert storage.store(KID, plain(b"v", 5.0), now=10.0) is False
    assert storage.store(KID, sub("a", b"v", 9.0), now=10.0) is False
    assert len(storage) == 0 and storage.get(KID, 10.0) is None


def test_expired_records_are_dropped_on_read() -> None:
    storage = LocalStorage()
    assert storage.store(KID, plain(b"v", 20.0), now=0.0)
    assert held(storage, now=19.9) == [(None, b"v", 20.0)]
    assert storage.get(KID, now=20.0) is None
    assert len(storage) == 0, "reading an expired entry removes it"


def test_newer_expiration_wins_for_plain_values() -> None:
    storage = LocalStorage()
    assert storage.store(KID, plain(b"old", 10.0), now=0.0)
    assert storage.store(KID, plain(b"new", 20.0), now=0.0)
    assert held(storage, 0.0) == [(None, b"new", 20.0)]
    assert storage.store(KID, plain(b"older", 15.0), now=0.0) is False
    assert storage.store(KID, plain(b"other", 20.0), now=0.0) is False, "a tie keeps what is held"
    assert held(storage, 0.0) == [(None, b"new", 20.0)]


def test_identical_re_store_counts_as_held() -> None:
    storage = LocalStorage()
    record = plain(b"v", 10.0)
    assert storage.store(KID, record, now=0.0)
    assert storage.store(KID, record, now=1.0) is True
    assert storage.store(KID, plain(b"v", 9.0), now=1.0) is False, "an older copy of it is not held"
    assert len(storage) == 1


def test_subkeys_have_their_own_expiration() -> None:
    storage = LocalStorage()
    assert storage.store(KID, sub("a", b"A", 10.0), now=0.0)
    assert storage.store(KID, sub("b", b"B", 30.0), now=0.0)
    assert storage.store(KID, sub("c", b"C", 20.0), now=0.0)
    entry = storage.get(KID, 0.0)
    assert entry is not None and entry.value is None and entry.expiration_time == 30.0
    assert sorted(held(storage, 0.0)) == [
        (serialize_key("a"), b"A", 10.0),
        (serialize_key("b"), b"B", 30.0),
        (serialize_key("c"), b"C", 20.0),
    ]
    # per subkey: newer wins, older is refused, the same record again counts as held
    assert storage.store(KID, sub("a", b"A2", 25.0), now=0.0)
    assert storage.store(KID, sub("a", b"A3", 24.0), now=0.0) is False
    assert storage.store(KID, sub("a", b"A2", 25.0), now=0.0) is True
    assert sorted(held(storage, 15.0)) == [
        (serialize_key("a"), b"A2", 25.0),
        (serialize_key("b"), b"B", 30.0),
        (serialize_key("c"), b"C", 20.0),
    ]
    assert sorted(held(storage, 22.0)) == [
        (serialize_key("a"), b"A2", 25.0),
        (serialize_key("b"), b"B", 30.0),
    ]
    assert held(storage, 26.0) == [(serialize_key("b"), b"B", 30.0)]
    assert held(storage, 30.0) == []


def test_dictionary_expires_with_its_latest_subkey() -> None:
    """A dictionary lives as long as its longest-lived subkey, which decides against plain values."""
    storage = LocalStorage()
    storage.store(KID, sub("a", b"A", 40.0), now=0.0)
    storage.store(KID, sub("b", b"B", 10.0), now=0.0)
    storage.store(KID, sub("a", b"A", 50.0), now=0.0)
    entry = storage.get(KID, 0.0)
    assert entry is not None and entry.expiration_time == 50.0
    # a plain value expiring at 45 loses to the dictionary (50), even after "b" has expired
    assert storage.store(KID, plain(b"P", 45.0), now=20.0) is False
    assert held(storage, 20.0) == [(serialize_key("a"), b"A", 50.0)]


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        (plain(b"P", 10.0), sub("s", b"S", 20.0), "second"),
        (plain(b"P", 20.0), sub("s", b"S", 10.0), "second"),
        (sub("s", b"S", 10.0), plain(b"P", 20.0), "first"),
        (sub("s", b"S", 20.0), plain(b"P", 10.0), "first"),
        (plain(b"P", 20.0), sub("s", b"S", 20.0), "second"),
        (sub("s", b"S", 20.0), plain(b"P", 20.0), "first"),
    ],
)
def test_a_dictionary_wins_over_a_plain_value_whatever_the_expirations(
    first: DHTRecord, second: DHTRecord, winner: str
) -> None:
    storage = LocalStorage()
    assert storage.store(KID, first, now=0.0)
    assert storage.store(KID, second, now=0.0) is (winner == "second")
    expected = first if winner == "first" else second
    assert held(storage, 0.0) == [(expected.subkey, expected.value, expected.expiration_time)]


def test_a_cache_at_capacity_evicts_least_recently_stored() -> None:
    storage = LocalStorage(capacity=3, evict=True)
    keys = [serialize_key(f"k{i}") for i in range(5)]
    ids = [key_id(k) for k in keys]
    for i in range(3):
        assert storage.store(ids[i], plain(b"v", 100.0, key=keys[i]), now=0.0)
    # storing k0 again (a newer record) makes it the most recently stored
    assert storage.store(ids[0], plain(b"v2", 200.0, key=keys[0]), now=0.0)
    assert storage.store(ids[3], plain(b"v", 100.0, key=keys[3]), now=0.0)
    assert len(storage) == 3
    assert storage.get(ids[1], 0.0) is None, "k1 was stored least recently"
    assert storage.store(ids[4], sub("s", b"v", 100.0, key=keys[4]), now=0.0)
    assert [kid for kid, _ in storage.items(0.0)] == [ids[0], ids[3], ids[4]]


def test_remove_expired() -> None:
    storage = LocalStorage()
    other_key = serialize_key("other")
    storage.store(KID, sub("short", b"1", 10.0), now=0.0)
    storage.store(KID, sub("long", b"2", 30.0), now=0.0)
    storage.store(key_id(other_key), plain(b"3", 10.0, key=other_key), now=0.0)
    storage.remove_expired(now=5.0)
    assert len(storage) == 2
    storage.remove_expired(now=10.0)
    assert len(storage) == 1
    [(kid, entry)] = storage.items(10.0)
    assert kid == KID and entry.subkeys is not None and list(entry.subkeys) == [serialize_key("long")]
    assert entry.expiration_time == 30.0
    storage.remove_expired(now=30.0)
    assert len(storage) == 0


def test_items_skips_expired_entries() -> None:
    storage = LocalStorage()
    a, b = serialize_key("a"), serialize_key("b")
    storage.store(key_id(a), plain(b"1", 10.0, key=a), now=0.0)
    storage.store(key_id(b), plain(b"2", 20.0, key=b), now=0.0)
    assert [kid for kid, _ in storage.items(15.0)] == [key_id(b)]


# ---- validators ---------------------------------------------------------------------------


@pytest.fixture
def owner() -> Identity:
    return Identity.generate(random.Random(1))


@pytest.fixture
def stranger() -> Identity:
    return Identity.generate(random.Random(2))


def owned_record(owner: Identity, *, in_subkey: bool = False, value: bytes = b"payload") -> DHTRecord:
    if in_subkey:
        return DHTRecord(serialize_key("peers"), serialize_key(owner.ownership_marker), value, 100.0)
    return DHTRecord(serialize_key(f"profile{owner.ownership_marker}"), None, value, 100.0)


def signed(validator: RecordValidator, record: DHTRecord) -> DHTRecord:
    return dataclasses.replace(record, value=validator.sign(record))


def test_identities_from_the_same_seed_are_equal(owner: Identity) -> None:
    again = Identity.generate(random.Random(1))
    assert again.public_key == owner.public_key and again.node_id == owner.node_id
    assert again.sign(b"x") == owner.sign(b"x"), "Ed25519 signatures are deterministic"
    assert Identity.from_private_bytes(owner.private_bytes()).public_key == owner.public_key


@pytest.mark.parametrize("in_subkey", [False, True])
def test_owner_signs_and_record_validates(owner: Identity, in_subkey: bool) -> None:
    validator = SignatureValidator(owner)
    record = owned_record(owner, in_subkey=in_subkey)
    result = signed(validator, record)
    assert result.value != record.value, "an owned record carries a signature"
    assert validator.validate(result) is None
    assert validator.strip(result) == b"payload"
    # any node can check it, not just the owner
    assert SignatureValidator(Identity.generate(random.Random(3))).validate(result) is None


def test_non_owner_cannot_sign(owner: Identity, stranger: Identity) -> None:
    with pytest.raises(ValueError, match=re.escape(owner.ownership_marker)):
        SignatureValidator(stranger).sign(owned_record(owner))
    with pytest.raises(ValueError, match=re.escape(owner.ownership_marker)):
        SignatureValidator(stranger).sign(owned_record(owner, in_subkey=True))


def test_forged_signature_is_rejected(owner: Identity, stranger: Identity) -> None:
    record = owned_record(owner)
    payload = msgpack.packb(
        [record.key, record.subkey, record.value, record.expiration_time], use_bin_type=True
    )
    forged = dataclasses.replace(record, value=msgpack.packb([record.value, stranger.sign(payload)]))
    reason = SignatureValidator(stranger).validate(forged)
    assert reason is not None and "signature" in reason
    garbage = dataclasses.replace(record, value=msgpack.packb([record.value, b"\x00" * 64]))
    assert SignatureValidator(owner).validate(garbage) is not None


def test_tampered_value_is_rejected(owner: Identity) -> None:
    validator = SignatureValidator(owner)
    good = signed(validator, owned_record(owner))
    _, signature = msgpack.unpackb(good.value)
    tampered = dataclasses.replace(good, value=msgpack.packb([b"evil", signature]))
    reason = validator.validate(tampered)
    assert reason is not None and "signature" in reason


def test_extended_expiration_is_rejected(owner: Identity) -> None:
    validator = SignatureValidator(owner)
    good = signed(validator, owned_record(owner))
    extended = dataclasses.replace(good, expiration_time=good.expiration_time + 1e6)
    reason = validator.validate(extended)
    assert reason is not None and "signature" in reason


def test_signature_cannot_be_replayed_under_another_subkey(owner: Identity) -> None:
    validator = SignatureValidator(owner)
    good = signed(validator, owned_record(owner, in_subkey=True))
    assert good.subkey is not None
    moved = dataclasses.replace(good, subkey=serialize_key(f"x{owner.ownership_marker}"))
    assert validator.validate(moved) is not None


@pytest.mark.parametrize("value", [b"payload", msgpack.packb(b"payload"), msgpack.packb([1, 2, 3])])
def test_owned_record_without_signature_is_rejected(owner: Identity, value: bytes) -> None:
    reason = SignatureValidator(owner).validate(owned_record(owner, value=value))
    assert reason == "record is owned but carries no signature"


def test_record_naming_two_owners_is_rejected(owner: Identity, stranger: Identity) -> None:
    record = DHTRecord(
        serialize_key(f"k{owner.ownership_marker}"), serialize_key(stranger.ownership_marker), b"v", 100.0
    )
    with pytest.raises(ValueError, match=re.escape(stranger.ownership_marker)):
        SignatureValidator(owner).sign(record)
    fake = dataclasses.replace(record, value=msgpack.packb([b"v", owner.sign(b"anything")]))
    assert SignatureValidator(owner).validate(fake) == "a record may name only one owner"


def test_records_without_markers_pass_untouched(owner: Identity) -> None:
    validator = SignatureValidator(owner)
    for record in (plain(b"free", 100.0), sub("anyone", b"free", 100.0)):
        assert validator.sign(record) == b"free"
        assert validator.validate(record) is None
        assert validator.strip(record) == b"free"


def test_the_memory_of_verified_signatures_stays_bounded() -> None:
    memory = VerifiedSignatures(3)
    for digest in (b"a", b"b", b"c", b"d"):
        memory.add(digest)
    assert len(memory) == 3 and b"a" not in memory and b"d" in memory, "the oldest is forgotten"


def test_a_key_refused_once_is_refused_again_and_a_valid_one_still_reads_back() -> None:
    """``deserialize_key`` remembers valid keys; what it refused must not slip in the second time."""
    bad = msgpack.packb(1.5)
    for _ in range(2):
        with pytest.raises(ValueError, match="not a DHT key"):
            deserialize_key(bad)
    good = serialize_key(("expert", 3))
    assert deserialize_key(good) == deserialize_key(good) == ("expert", 3)


class Versioned(RecordValidator):
    """Wraps values as ``v1:<value>`` and rejects anything else."""

    def sign(self, record: DHTRecord) -> bytes:
        return b"v1:" + record.value

    def validate(self, record: DHTRecord) -> str | None:
        return None if record.value.startswith(b"v1:") else "missing version tag"

    def strip(self, record: DHTRecord) -> bytes:
        return record.value.removeprefix(b"v1:")


def test_validator_chain_signs_in_order_and_checks_in_reverse(owner: Identity) -> None:
    chain = ValidatorChain([Versioned(), SignatureValidator(owner)])
    record = owned_record(owner)
    result = chain.sign(record)
    inner, _signature = msgpack.unpackb(result.value)
    assert inner == b"v1:payload", "the signature is the outermost wrapping"
    assert chain.validate(result) is None
    assert chain.strip(result) == b"payload"
    # the signature covers the versioned value, so changing the inner value breaks it
    tampered = dataclasses.replace(result, value=msgpack.packb([b"v1:evil", _signature]))
    assert chain.validate(tampered) is not None
    # a correctly signed value without the version tag fails the inner validator
    untagged = dataclasses.replace(record, value=SignatureValidator(owner).sign(record))
    assert chain.validate(untagged) == "missing version tag"


def test_validator_chain_in_the_other_order(owner: Identity) -> None:
    chain = ValidatorChain([SignatureValidator(owner), Versioned()])
    result = chain.sign(owned_record(owner))
    assert result.value.startswith(b"v1:"), "now the version tag is outermost"
    assert chain.validate(result) is None
    assert chain.strip(result) == b"payload"
    assert chain.validate(dataclasses.replace(result, value=result.value[3:])) == "missing version tag"
    # the version tag is not part of what was signed: it can be checked by the outer validator only
    assert SignatureValidator(owner).validate(dataclasses.replace(result, value=result.value[3:])) is None


def test_validator_chain_propagates_sign_refusal(owner: Identity, stranger: Identity) -> None:
    chain = ValidatorChain([Versioned(), SignatureValidator(stranger)])
    with pytest.raises(ValueError, match=re.escape(owner.ownership_marker)):
        chain.sign(owned_record(owner))
    assert ValidatorChain().sign(plain(b"x", 1.0)).value == b"x"
    assert ValidatorChain().validate(plain(b"x", 1.0)) is None


def test_one_plain_store_cannot_wipe_what_many_writers_announced_under_a_key() -> None:
    """Issue 14: a peer claiming a made-up plain value for an expert grid prefix, with the latest
    expiration a node accepts, replaced every server's subkey there and hid the experts."""
    storage = LocalStorage()
    for writer in "abcd":
        assert storage.store(KID, sub(writer, writer.encode(), 30.0), now=0.0)
    assert storage.put(KID, plain(b"made up", 10_000.0), now=0.0) == (
        "a dictionary is held under this key until its subkeys expire"
    )
    assert [value for _, value, _ in held(storage, 0.0)] == [b"a", b"b", b"c", b"d"]
    assert storage.store(KID, plain(b"later", 100.0), now=31.0), "once they expired, a plain value may come"
