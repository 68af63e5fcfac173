"""Hostile bodies: whatever msgpack a peer sends, a DHT handler answers or raises ValueError.

Hypothesis throws random msgpack-shaped bodies, and bodies that are nearly right (a valid
sender, records with one bad field), at ``DHTHandlers.ping/store/find`` and at the codec's
decoders. Any other exception would be a bug the RPC layer reports as an internal error; after
every batch the node must still serve a well-formed request.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from hivemind_core.dht import DHTConfig, DHTNode, Identity
from hivemind_core.dht.codec import decode_contact, decode_entry, decode_node, decode_record, encode_node
from hivemind_core.dht.handlers import DHTHandlers
from hivemind_core.dht.ids import ID_BYTES, key_id, serialize_key
from hivemind_core.dht.storage import RECORD_OVERHEAD
from hivemind_sim import Simulation

SENDER = Identity.generate(random.Random(5))
ENDPOINTS = ["peer1", "h:1", "", "127.0.0.1:0", "x" * 300, "\x00bad"]

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=40)
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=25,
)
senders = st.one_of(
    st.tuples(
        st.just(SENDER.public_key) | st.binary(min_size=31, max_size=33),
        st.none() | st.sampled_from(ENDPOINTS),
    ).map(list),
    values,
)
keys = st.one_of(
    st.recursive(
        st.text(max_size=8) | st.binary(max_size=8) | st.integers(-(2**63), 2**64 - 1),
        lambda inner: st.tuples(inner, inner),
        max_leaves=6,
    ).map(serialize_key),
    st.binary(max_size=30),
    st.just(serialize_key(f"owned{SENDER.ownership_marker}")),
)
record_values = st.binary(max_size=64) | st.tuples(st.binary(max_size=8), st.binary(max_size=70)).map(
    lambda pair: msgpack.packb(list(pair))  # what a signed value looks like: [value, signature]
)
expirations = st.floats() | st.integers(-(2**63), 2**64 - 1) | st.floats(0, 2e5) | values
records = st.one_of(
    st.tuples(keys, st.none() | keys, record_values, expirations, st.booleans() | values).map(list),
    values,
)
store_bodies = st.one_of(st.tuples(senders, st.lists(records, max_size=6)).map(list), values)
find_bodies = st.one_of(
    st.tuples(
        senders,
        st.lists(st.binary(min_size=ID_BYTES, max_size=ID_BYTES) | values, max_size=4),
        st.integers(-2, 25) | values,
    ).map(list),
    values,
)
ping_bodies = st.one_of(st.tuples(senders).map(list), values)
peers = st.sampled_from(["peer1", "h:1", "10.0.0.1:4000"])


@given(
    bodies=st.lists(
        st.tuples(
            st.sampled_from(["ping", "store", "find"]), peers, store_bodies | find_bodies | ping_bodies
        ),
        min_size=1,
        max_size=12,
    )
)
def test_handlers_raise_only_value_error_and_keep_serving(bodies: list[tuple[str, str, Any]]) -> None:
    with Simulation(seed=0) as sim:

        async def main() -> None:
            node = await DHTNode.create(
                sim.add_peer("victim"), config=DHTConfig(), clock=sim.loop.time, rng=sim.random("victim")
            )
            handlers = DHTHandlers(
                config=node.config,
                membership=node.membership,
                storage=node.storage,
                cache=node.cache,
                rules=node.rules,
                clock=node.clock,
                me=node.calls.me,
            )
            for method, peer, body in bodies:
                with contextlib.suppress(ValueError):
                    await getattr(handlers, method)(peer, body)
            # still serving: a well-formed store and find succeed
            sender = encode_node(SENDER.public_key, None)
            key, value = serialize_key("after"), msgpack.packb("fuzz")
            stored = await handlers.store("peer1", [sender, [[key, None, value, node.now() + 60, False]]])
            assert stored[1] == [[True, None]]
            _, _, [[entry, _]] = await handlers.find(
                "peer1", [sender, [key_id(key).to_bytes(ID_BYTES, "big")], 5]
            )
            assert entry is not None and entry[1] == value
            assert node.storage.bytes_used >= len(value) + RECORD_OVERHEAD
            await node.shutdown(handoff_timeout=0)

        sim.loop.run_until_complete(main())


def _only_value_error(decode: Any, *args: Any) -> None:
    with contextlib.suppress(ValueError):
        decode(*args)


def _reachable(endpoint: str) -> None:
    if not endpoint.isprintable():
        raise ValueError("unprintable")


@given(raw=values | records | st.lists(values, min_size=2, max_size=2))
def test_codec_decoders_raise_only_value_error(raw: Any) -> None:
    _only_value_error(decode_node, raw, "node")
    _only_value_error(decode_contact, raw, "contact", _reachable)
    _only_value_error(decode_record, raw, "record")
    _only_value_error(decode_entry, raw, "entry")


@given(
    subkeys=st.lists(st.tuples(keys, st.binary(max_size=8), expirations).map(list), max_size=4),
    expiration=expirations,
)
def test_decode_entry_raises_only_value_error_for_nearly_valid_entries(
    subkeys: list, expiration: Any
) -> None:
    _only_value_error(decode_entry, [b"k", None, expiration, subkeys], "entry")
    _only_value_error(decode_entry, [b"k", b"v", expiration, None], "entry")
    if isinstance(expiration, float) and not math.isfinite(expiration):
        try:
            decode_entry([b"k", b"v", expiration, None], "entry")
        except ValueError as error:
            assert "finite" in str(error)
        else:
            raise AssertionError("a non-finite expiration was accepted")
