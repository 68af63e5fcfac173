"""160-bit identifiers for nodes and keys, and the XOR metric between them."""

from __future__ import annotations

import functools
import hashlib
import random
from typing import Any

import msgpack

ID_BITS = 160
ID_BYTES = ID_BITS // 8
ID_SPACE = 1 << ID_BITS


def id_to_bytes(node_id: int) -> bytes:
    return node_id.to_bytes(ID_BYTES, "big")


def id_from_bytes(data: bytes) -> int:
    if not isinstance(data, bytes) or len(data) != ID_BYTES:
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        raise ValueError(f"an id must be {ID_BYTES} bytes, got {size}")
    return int.from_bytes(data, "big")


@functools.lru_cache(maxsize=1 << 16)
def node_id_for(public_key: bytes) -> int:
    """A node's id: a hash of its public key, so nobody picks its own place in the id space."""
    return int.from_bytes(
        hashlib.blake2b(public_key, digest_size=ID_BYTES, person=b"dht-node").digest(), "big"
    )


_INT_RANGE = range(-(1 << 63), 1 << 64)  # what msgpack can encode


def _check_key_part(part: Any) -> None:
    if isinstance(part, tuple | list):
        for item in part:
            _check_key_part(item)
    elif isinstance(part, bool) or not isinstance(part, str | bytes | int):
        raise TypeError(
            f"DHT keys and subkeys must be str, bytes, int or tuples of them, got {type(part).__name__}"
        )
    elif isinstance(part, int) and part not in _INT_RANGE:
        raise TypeError(f"integers in DHT keys must fit in 64 bits, got {part}")


def serialize_key(key: Any) -> bytes:
    """The canonical bytes of a user key or subkey (msgpack); raises TypeError if unsupported.

    Only types with one encoding are allowed (no floats, None, dicts), so equal keys always
    hash to the same place.
    """
    _check_key_part(key)
    return msgpack.packb(key, use_bin_type=True)


def key_id(key_bytes: bytes) -> int:
    """Where a key lives in the id space."""
    return int.from_bytes(hashlib.blake2b(key_bytes, digest_size=ID_BYTES, person=b"dht-key").digest(), "big")


def distance(a: int, b: int) -> int:
    return a ^ b


def random_id(rng: random.Random, lower: int = 0, upper: int = ID_SPACE) -> int:
    """A uniformly random id in [lower, upper)."""
    return rng.randrange(lower, upper)
