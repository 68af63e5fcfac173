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
MAX_KEY_DEPTH = 32
"""Deepest nesting of tuples in a key or subkey (a deeper key would exhaust the stack)."""


def _check_key_part(part: Any, depth: int = 0) -> None:
    if isinstance(part, tuple):
        if depth >= MAX_KEY_DEPTH:
            raise ValueError(f"DHT keys and subkeys may nest tuples at most {MAX_KEY_DEPTH} deep")
        for item in part:
            _check_key_part(item, depth + 1)
    elif isinstance(part, list):
        raise TypeError(
            "DHT keys and subkeys must be str, bytes, int or tuples of them, got list "
            "(use a tuple: it is hashable, and it is what reads back)"
        )
    elif isinstance(part, bool) or not isinstance(part, str | bytes | int):
        raise TypeError(
            f"DHT keys and subkeys must be str, bytes, int or tuples of them, got {type(part).__name__}"
        )
    elif isinstance(part, int) and part not in _INT_RANGE:
        raise TypeError(f"integers in DHT keys must fit in 64 bits, got {part}")


def serialize_key(key: Any) -> bytes:
    """The canonical bytes of a user key or subkey (msgpack); raises TypeError if unsupported.

    Only types with one encoding are allowed (no floats, None, dicts), so equal keys always
    hash to the same place. Sequences must be tuples: msgpack packs lists and tuples alike, so
    accepting both would make ``[1]`` and ``(1,)`` one key; a tuple is what a subkey reads back
    as (a dictionary key must be hashable). Raises ValueError beyond :data:`MAX_KEY_DEPTH`.
    """
    _check_key_part(key)
    return msgpack.packb(key, use_bin_type=True)


KEY_CACHE_SIZE = 1 << 13
"""Canonical keys remembered by :func:`deserialize_key` (each at most ``max_key_size`` bytes)."""


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def deserialize_key(data: bytes) -> Any:
    """The key or subkey whose canonical bytes are ``data`` (tuples for sequences).

    Raises ValueError unless ``data`` is exactly what :func:`serialize_key` makes of some key,
    so bytes from another peer cannot smuggle in a float, a dictionary, a list, invalid UTF-8
    or a second encoding of a key that already has one. Every replica and every reader checks
    the same keys again and again, so valid ones are remembered (process-wide: the answer
    depends on nothing but ``data``, and keys are immutable); refusals are not, so a flood of
    bad keys cannot push the good ones out.
    """
    try:
        key = msgpack.unpackb(data, raw=False, use_list=False)
        _check_key_part(key)
        canonical = msgpack.packb(key, use_bin_type=True) == data
    except Exception as error:  # msgpack raises many kinds for hostile bytes
        detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ValueError(f"not a DHT key ({detail})") from None
    if not canonical:
        raise ValueError("not a DHT key (not in canonical form)")
    return key


def key_id(key_bytes: bytes) -> int:
    """Where a key lives in the id space."""
    return int.from_bytes(hashlib.blake2b(key_bytes, digest_size=ID_BYTES, person=b"dht-key").digest(), "big")


def distance(a: int, b: int) -> int:
    return a ^ b


def random_id(rng: random.Random, lower: int = 0, upper: int = ID_SPACE) -> int:
    """A uniformly random id in [lower, upper)."""
    return rng.randrange(lower, upper)
