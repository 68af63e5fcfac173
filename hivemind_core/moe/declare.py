"""How experts are announced in the DHT, and read back.

For expert ``ffn.4.17`` served at endpoint E, a server stores (each with an expiration it
refreshes on every heartbeat):

* key ``ffn.4.17`` -> E, so a client can find one expert by name;
* key ``ffn.`` subkey 4 -> ["ffn.4.17", E] and key ``ffn.4.`` subkey 17 -> ["ffn.4.17", E],
  the prefix entries: each prefix lists its alive next coordinates, which lets the beam
  search walk the grid one dimension at a time instead of scanning it.

An expert whose server dies disappears when its entries expire; clients stop choosing it
sooner, as soon as a call to it fails (see ``client.MoEClient``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..dht import DHTNode, StoreItem
from .uid import parse_uid


def declaration(uids: Sequence[str], endpoint: str, expiration_time: float) -> list[StoreItem]:
    items = [StoreItem(uid, endpoint, expiration_time) for uid in uids]
    prefixes: dict[tuple[str, int], str] = {}
    for uid in uids:
        for prefix, coordinate in parse_uid(uid).prefixes():
            prefixes[prefix, coordinate] = uid
    items += [
        StoreItem(prefix, [uid, endpoint], expiration_time, subkey=coordinate)
        for (prefix, coordinate), uid in prefixes.items()
    ]
    return items


async def declare_experts(dht: DHTNode, uids: Sequence[str], endpoint: str, expiration_time: float) -> bool:
    """Announce ``uids`` at ``endpoint`` until ``expiration_time``; True if every expert's own
    record landed. A prefix subkey may be refused: several servers share it, and another
    server's newer entry for the same coordinate serves the beam search just as well."""
    stored = await dht.store_many(declaration(uids, endpoint, expiration_time))
    return all(stored[: len(uids)])


def parse_child(value: Any) -> tuple[str, str] | None:
    """A prefix entry's value as (uid, endpoint), or None if it is malformed."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        try:
            parse_uid(value[0])
        except ValueError:
            return None
        return value[0], value[1]
    return None


async def find_experts(dht: DHTNode, uids: Sequence[str]) -> dict[str, str | None]:
    """The endpoint currently announced for each UID (None if none is)."""
    found = await dht.get_many(list(uids))
    return {
        uid: (v.value if v is not None and isinstance(v.value, str) else None)
        for uid, v in zip(uids, found, strict=True)
    }
