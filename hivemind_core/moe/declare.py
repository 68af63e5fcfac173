"""How experts are announced in the DHT, and read back.

For expert ``ffn.4.17`` served at endpoint E by a peer whose identity's ownership marker is
M (``[owner:<public key>]``), a server stores (each with an expiration it refreshes on every
heartbeat):

* key ``ffn.4.17`` subkey M -> E, so a client can find one expert by name;
* key ``ffn.`` subkey (4, M) -> ["ffn.4.17", E] and key ``ffn.4.`` subkey (17, M) ->
  ["ffn.4.17", E], the prefix entries: each prefix lists its alive next coordinates, which
  lets the beam search walk the grid one dimension at a time instead of scanning it.

The marker in every subkey makes the DHT sign the record with the declaring peer's key and
refuse anyone else's write to it (``dht.validation.SignatureValidator``), everywhere it is
stored and on every read. So nobody can overwrite or forge another peer's declaration; they
can only add their own, under their own key, and a client checks that the server it calls
holds that key (``MoEClient``), which binds a declared endpoint to the peer that declared it.
Readers drop entries whose endpoint the transport could not dial.

An expert whose server dies disappears when its entries expire; clients stop choosing it
sooner, as soon as a call to it fails (see ``client.MoEClient``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from ..dht import DHTNode, StoreItem, ValueWithExpiration
from ..dht.identity import PUBLIC_KEY_BYTES, ownership_marker
from .uid import parse_uid

EndpointCheck = Callable[[str], None]
"""Raises ValueError unless the endpoint is one the transport could dial."""
NONCE_BYTES = 16
"""Size of the nonce a client sends a server to sign (``moe.identity``)."""


@dataclass(frozen=True, slots=True)
class Declaration:
    """One peer's signed claim that it serves expert ``uid`` at ``endpoint``."""

    uid: str
    endpoint: str
    owner: bytes
    """The declaring peer's public key: the server at ``endpoint`` must prove it holds it."""
    expiration_time: float


def declaration(
    uids: Sequence[str], endpoint: str, expiration_time: float, public_key: bytes
) -> list[StoreItem]:
    """The records declaring ``uids`` at ``endpoint``, owned by ``public_key``."""
    marker = ownership_marker(public_key)
    items = [StoreItem(uid, endpoint, expiration_time, subkey=marker) for uid in uids]
    prefixes: dict[tuple[str, int], str] = {}
    for uid in uids:
        for prefix, coordinate in parse_uid(uid).prefixes():
            prefixes[prefix, coordinate] = uid
    items += [
        StoreItem(prefix, [uid, endpoint], expiration_time, subkey=(coordinate, marker))
        for (prefix, coordinate), uid in prefixes.items()
    ]
    return items


async def declare_experts(dht: DHTNode, uids: Sequence[str], endpoint: str, expiration_time: float) -> bool:
    """Announce ``uids`` at ``endpoint`` until ``expiration_time``, signed by ``dht``'s identity;
    True if every expert's own record landed. A prefix subkey may be refused (a replica out of
    room): the expert's record is what ``find_experts`` reads, and the next heartbeat retries.
    An endpoint nobody could dial is stored all the same (readers drop it), as a lying peer would."""
    stored = await dht.store_many(declaration(uids, endpoint, expiration_time, dht.identity.public_key))
    return all(stored[: len(uids)])


def identity_proof(endpoint: str, nonce: bytes) -> bytes:
    """What a server signs to prove it holds its declarations' key: a client's fresh nonce, for
    the endpoint the client dialed (so a proof cannot be replayed, nor relayed elsewhere)."""
    return msgpack.packb(["hivemind-moe-identity", endpoint, nonce], use_bin_type=True)


def owner_of(marker: Any) -> bytes | None:
    """The public key an ownership marker names, or None if ``marker`` is not one."""
    if not isinstance(marker, str) or not marker.startswith("[owner:") or not marker.endswith("]"):
        return None
    try:
        public_key = base64.urlsafe_b64decode(marker[7:-1])
    except (binascii.Error, ValueError):
        return None
    if len(public_key) != PUBLIC_KEY_BYTES or ownership_marker(public_key) != marker:
        return None
    return public_key


def parse_child(
    subkey: Any, item: ValueWithExpiration, check_endpoint: EndpointCheck
) -> tuple[int, Declaration] | None:
    """A prefix entry as (coordinate, declaration), or None if it is malformed or unsigned, or
    its endpoint could not be dialed."""
    if not isinstance(subkey, tuple) or len(subkey) != 2 or type(subkey[0]) is not int:
        return None
    owner = owner_of(subkey[1])
    value = item.value
    if owner is None or not isinstance(value, list) or len(value) != 2:
        return None
    if not all(isinstance(v, str) for v in value) or not _dialable(value[1], check_endpoint):
        return None
    try:
        parse_uid(value[0])
    except ValueError:
        return None
    return subkey[0], Declaration(value[0], value[1], owner, item.expiration_time)


async def find_declarations(dht: DHTNode, uids: Sequence[str]) -> dict[str, Declaration | None]:
    """The newest valid declaration of each UID (None if none is announced)."""
    found = await dht.get_many(list(uids))
    check = dht.rpc.transport.check_endpoint
    result: dict[str, Declaration | None] = {}
    for uid, value in zip(uids, found, strict=True):
        entries = value.value if value is not None and isinstance(value.value, dict) else {}
        valid = [
            Declaration(uid, item.value, owner, item.expiration_time)
            for subkey, item in entries.items()
            if (owner := owner_of(subkey)) is not None
            and isinstance(item.value, str)
            and _dialable(item.value, check)
        ]
        result[uid] = max(valid, key=recency, default=None)
    return result


async def find_experts(dht: DHTNode, uids: Sequence[str]) -> dict[str, str | None]:
    """The endpoint of the newest valid declaration of each UID (None if none is)."""
    found = await find_declarations(dht, uids)
    return {uid: None if d is None else d.endpoint for uid, d in found.items()}


def recency(declaration: Declaration) -> tuple[float, bytes]:
    """Sort key, newest last: expiration, then owner, so that ties break the same way every run."""
    return declaration.expiration_time, declaration.owner


def _dialable(endpoint: str, check_endpoint: EndpointCheck) -> bool:
    try:
        check_endpoint(endpoint)
    except ValueError:
        return False
    return True
