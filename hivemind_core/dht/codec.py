"""The DHT's wire format: how nodes, contacts and stored entries travel inside RPC bodies.

Every request starts with the sender's ``[public_key, endpoint]`` (endpoint nil in client
mode) and every response with the responder's, so each exchange teaches both sides about
each other. Bodies are compact msgpack arrays:

* ``dht.ping``  ``[sender]`` -> ``[responder]``
* ``dht.store`` ``[sender, [[key, subkey|nil, value, expiration, is_cache], ...]]``
  -> ``[responder, [[stored, reason|nil], ...]]``
* ``dht.find``  ``[sender, [id, ...], count]``
  -> ``[responder, [contact, ...], [[entry|nil, [contact index, ...]], ...]]`` where an entry
  is ``[key, value|nil, expiration, [[subkey, value, expiration], ...]|nil]``. Ids must be
  distinct; an answer names at most ``count`` contacts per id (so at most ``count`` times as
  many contacts as ids), and answers ``false`` instead of an entry it holds but left out to stay
  within its byte budget (ask for that id again).

Decoders raise ``ValueError`` naming the field at fault (messages are formatted only then: the
decoders run for every record and every subkey that arrives). Bodies are validated by hand, not by
pydantic: at 10,000 simulated peers a model per RPC costs too much.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .identity import PUBLIC_KEY_BYTES
from .ids import node_id_for
from .routing import Contact
from .storage import DHTRecord, StoredEntry

MAX_ENDPOINT_LENGTH = 256

EndpointCheck = Callable[[str], None]
"""Raises ValueError unless an endpoint is one this node's transport can reach."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def is_expiration(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value)


def encode_node(public_key: bytes, endpoint: str | None) -> list[Any]:
    return [public_key, endpoint]


def encode_nodes(contacts: list[Contact]) -> list[list[Any]]:
    """Contacts as a find answer names them (:func:`encode_node` each, without a call each)."""
    return [[contact.public_key, contact.endpoint] for contact in contacts]


def decode_node(raw: Any, where: str) -> tuple[bytes, str | None]:
    # runs for every request and answer: messages are formatted only on failure
    if not (isinstance(raw, list) and len(raw) == 2):
        raise ValueError(f"{where} must be [public_key, endpoint]")
    public_key, endpoint = raw
    if not (isinstance(public_key, bytes) and len(public_key) == PUBLIC_KEY_BYTES):
        raise ValueError(f"{where}: public key must be {PUBLIC_KEY_BYTES} bytes")
    if not (endpoint is None or (isinstance(endpoint, str) and 0 < len(endpoint) <= MAX_ENDPOINT_LENGTH)):
        raise ValueError(f"{where}: endpoint must be nil or a string of at most {MAX_ENDPOINT_LENGTH} chars")
    return public_key, endpoint


def decode_contact(raw: Any, where: str, check_endpoint: EndpointCheck) -> Contact:
    """A contact someone told us about; its endpoint must be one our transport can reach."""
    public_key, endpoint = decode_node(raw, where)
    if endpoint is None:
        raise ValueError(f"{where}: a contact needs an endpoint")
    try:
        check_endpoint(endpoint)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return Contact(node_id_for(public_key), endpoint, public_key)


def encode_record(record: DHTRecord, is_cache: bool) -> list[Any]:
    return [record.key, record.subkey, record.value, record.expiration_time, is_cache]


def decode_record(raw: Any, where: str) -> tuple[DHTRecord, bool]:
    """A record to store, and whether it is only a cached copy."""
    if not (isinstance(raw, list) and len(raw) == 5):
        raise ValueError(f"{where} must be [key, subkey, value, expiration, is_cache]")
    key, subkey, value, expiration, is_cache = raw
    if not (
        isinstance(key, bytes)
        and (subkey is None or isinstance(subkey, bytes))
        and isinstance(value, bytes)
        and is_expiration(expiration)
        and isinstance(is_cache, bool)
    ):
        raise ValueError(f"{where} must be [bytes, bytes|nil, bytes, number, bool]")
    return DHTRecord(key, subkey, value, float(expiration)), is_cache


def encode_entry(entry: StoredEntry) -> list[Any]:
    subkeys = None
    if entry.subkeys is not None:
        subkeys = [[subkey, value, expiration] for subkey, (value, expiration) in entry.subkeys.items()]
    return [entry.key, entry.value, entry.expiration_time, subkeys]


def decode_entry(
    raw: Any,
    where: str,
    *,
    max_subkeys: int | None = None,
    first_subkeys: int | None = None,
) -> StoredEntry:
    """A stored entry from a find answer; one with more than ``max_subkeys`` subkeys is refused
    before they are decoded (no honest node holds more). With ``first_subkeys``, only that many
    are decoded and the rest ignored: a peer configured for more may hold more, but reading
    them all would let one answer of millions of tiny subkeys stall the loop."""
    if not (isinstance(raw, list) and len(raw) == 4):
        raise ValueError(f"{where} must be [key, value, expiration, subkeys]")
    key, value, expiration, subkeys = raw
    if not isinstance(key, bytes):
        raise ValueError(f"{where}: key must be bytes")
    if not is_expiration(expiration):
        raise ValueError(f"{where}: expiration must be a finite number")
    if subkeys is None:
        if not isinstance(value, bytes):
            raise ValueError(f"{where}: value must be bytes")
        return StoredEntry(key, value, float(expiration))
    if not isinstance(subkeys, list):
        raise ValueError(f"{where}: subkeys must be a list")
    if max_subkeys is not None and len(subkeys) > max_subkeys:
        raise ValueError(f"{where} has {len(subkeys)} subkeys; the limit is {max_subkeys}")
    parsed: dict[bytes, tuple[bytes, float]] = {}
    if first_subkeys is not None and len(subkeys) > first_subkeys:
        subkeys = subkeys[:first_subkeys]
    for i, item in enumerate(subkeys):  # one check per subkey: grids announce thousands
        if not (isinstance(item, list) and len(item) == 3):
            raise ValueError(f"{where}.subkeys[{i}] must be [subkey, value, exp]")
        subkey, subvalue, subexpiration = item
        if not (isinstance(subkey, bytes) and isinstance(subvalue, bytes) and is_expiration(subexpiration)):
            raise ValueError(f"{where}.subkeys[{i}] must be [bytes, bytes, number]")
        parsed[subkey] = (subvalue, float(subexpiration))
    return StoredEntry(key, None, float(expiration), parsed)
