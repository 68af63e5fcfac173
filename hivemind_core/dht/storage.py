"""What a DHT node holds: values with expiration times, plain or as dictionaries of subkeys.

A key holds either one plain value or a dictionary whose subkeys each carry their own value and
expiration (so many servers can announce under one key). The newer expiration wins: a record
older than what is held is refused, a newer one replaces it, and the same record again is a
no-op that counts as held. A dictionary wins over a plain value whatever their expirations: it
is shared by its writers, so one plain store (or one lying answer) must not wipe every subkey.
Expired data is dropped when read and swept periodically.

**Limits.** Remote peers decide what a node holds, so everything is bounded: total bytes, bytes
per key, subkeys per key, and bytes per *source*. A source is whoever brought a record this node
did not hold before; :func:`source_of` names it by network address (see there for why). Records
are charged at :func:`record_size`, an estimate of the memory they take. When a limit is
reached, a node's own replicas refuse new records with a reason (they never drop live data for
a newcomer: a flood must not silently push out what others stored), while a cache evicts its
least recently stored entries. Re-announcing a record already held never needs more room than
it already has, so the owners of held records keep them alive however full the node is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from .config import DHTConfig
from .routing import subnet_of

RECORD_OVERHEAD = 512
"""Bytes charged per record on top of its key, subkey and value: an upper estimate of what
Python spends on the objects holding one (tracemalloc: ~460 bytes for a key's only record,
~150 for each further subkey)."""


@dataclass(frozen=True, slots=True)
class DHTRecord:
    """One stored item as it travels between nodes (all fields in wire form)."""

    key: bytes
    subkey: bytes | None
    value: bytes
    expiration_time: float


@dataclass(slots=True)
class StoredEntry:
    """What a node holds under one key: a plain value, or subkeys (then ``value`` is None).

    A snapshot: storage hands out copies, so changing one changes nothing held.
    """

    key: bytes
    value: bytes | None
    expiration_time: float
    subkeys: dict[bytes, tuple[bytes, float]] | None = None

    def records(self) -> Iterator[DHTRecord]:
        if self.subkeys is None:
            assert self.value is not None
            yield DHTRecord(self.key, None, self.value, self.expiration_time)
        else:
            for subkey, (value, expiration) in self.subkeys.items():
                yield DHTRecord(self.key, subkey, value, expiration)


def record_size(record: DHTRecord) -> int:
    """The bytes a record is charged: its key, subkey and value plus :data:`RECORD_OVERHEAD`."""
    return len(record.key) + len(record.subkey or b"") + len(record.value) + RECORD_OVERHEAD


def source_of(peer: str) -> str:
    """Who is charged for what a request from ``peer`` (the address it came from) brings.

    Not the node id or the announced endpoint: both cost nothing to change, so a flood could
    wear a new one for every record. The address a request came from is what a writer cannot
    choose freely, and like the routing table we group IPv4 /24 and IPv6 /64 networks, where
    one machine can pick among many addresses. Loopback and simulated peers count by host.
    A record re-stored by a replica or a republisher is charged to that peer, not its author:
    unsigned records name no author, and charging the sender is what stops a flood.
    """
    return subnet_of(peer) or peer.rpartition(":")[0] or peer


@dataclass(slots=True)
class _Held:
    value: bytes
    expiration_time: float
    source: str | None
    size: int


@dataclass(slots=True)
class _Slot:
    """One key's records: ``{None: plain}`` or ``{subkey: ...}``."""

    key: bytes
    records: dict[bytes | None, _Held] = field(default_factory=dict)
    size: int = 0
    next_expiry: float = math.inf
    """No record expires before this (a lower bound), so reads skip scanning big dictionaries."""

    @property
    def expiration_time(self) -> float:
        return max(held.expiration_time for held in self.records.values())

    def snapshot(self) -> StoredEntry:
        plain = self.records.get(None)
        if plain is not None:
            return StoredEntry(self.key, plain.value, plain.expiration_time)
        subkeys = {s: (h.value, h.expiration_time) for s, h in self.records.items() if s is not None}
        return StoredEntry(self.key, None, self.expiration_time, subkeys)


class LocalStorage:
    """Records by key id, within the limits in the module docstring.

    With ``evict`` (a cache), a full storage makes room by dropping the least recently stored
    keys; without it (replicas), new records are refused. ``capacity`` bounds the number of
    keys, the other limits bytes (see :func:`record_size`) and subkeys; None means unbounded.
    ``max_bytes_per_source`` applies to records stored with a ``source`` (from other peers).
    """

    def __init__(
        self,
        *,
        capacity: int | None = None,
        max_bytes: int | None = None,
        max_bytes_per_source: int | None = None,
        max_entry_bytes: int | None = None,
        max_subkeys: int | None = None,
        evict: bool = False,
    ) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.max_bytes_per_source = max_bytes_per_source
        self.max_entry_bytes = max_entry_bytes
        self.max_subkeys = max_subkeys
        self.evict = evict
        self.bytes_used = 0
        """Bytes charged for everything held (expired records count until swept)."""
        self._slots: dict[int, _Slot] = {}
        self._by_source: dict[str, int] = {}

    @classmethod
    def for_replicas(cls, config: DHTConfig) -> LocalStorage:
        """What a node holds as one of a key's replicas: full means refusing, never evicting."""
        return cls(
            max_bytes=config.max_storage_bytes,
            max_bytes_per_source=config.max_bytes_per_source,
            max_entry_bytes=config.max_entry_bytes,
            max_subkeys=config.max_subkeys,
        )

    @classmethod
    def for_cache(cls, config: DHTConfig) -> LocalStorage:
        """Copies left by lookups passing by: full means forgetting the oldest."""
        return cls(
            capacity=config.cache_capacity,
            max_bytes=config.max_cache_bytes,
            max_bytes_per_source=config.max_bytes_per_source,
            max_entry_bytes=config.max_entry_bytes,
            max_subkeys=config.max_subkeys,
            evict=True,
        )

    def __len__(self) -> int:
        return len(self._slots)

    def bytes_from(self, source: str) -> int:
        """Bytes charged to ``source`` (see :func:`source_of`)."""
        return self._by_source.get(source, 0)

    def store(self, key_id: int, record: DHTRecord, now: float, *, source: str | None = None) -> bool:
        """Keep ``record`` unless it is expired, older than what is held or over a limit; True if
        held now. :meth:`put` says why not."""
        return self.put(key_id, record, now, source=source) is None

    def put(self, key_id: int, record: DHTRecord, now: float, *, source: str | None = None) -> str | None:
        """Like :meth:`store`, but returns None if held now, else the reason it is not."""
        if not record.expiration_time > now:
            return "expired"
        slot = self._live(key_id, now)
        replaced: list[bytes | None] = []
        if slot is not None:
            held = slot.records.get(record.subkey)
            if record.subkey is None and None not in slot.records:
                # a dictionary is shared by its writers: one plain store must not wipe everyone's
                # subkeys (a made-up value hid every expert under a grid prefix); it expires first
                return "a dictionary is held under this key until its subkeys expire"
            if record.subkey is not None and None in slot.records:
                replaced = [None]  # a subkey turns a plain value into a dictionary
            elif record.subkey is None:  # plain against plain: the later expiration wins
                if slot.expiration_time >= record.expiration_time:
                    if held is not None and (held.value, held.expiration_time) == (
                        record.value,
                        record.expiration_time,
                    ):
                        return None
                    return "a value that lives at least as long is held under this key"
                replaced = [None]
            elif held is not None:
                if held.expiration_time >= record.expiration_time:
                    if (held.value, held.expiration_time) == (record.value, record.expiration_time):
                        return None
                    return "a value that lives at least as long is held under this subkey"
                replaced = [record.subkey]
        size = record_size(record)
        reason = self._room_for(key_id, slot, replaced, record, size, source)
        if reason is not None:
            return reason
        if slot is None:
            slot = _Slot(record.key)
        for subkey in replaced:
            self._release(slot, subkey)
        slot.records[record.subkey] = _Held(record.value, record.expiration_time, source, size)
        slot.next_expiry = min(slot.next_expiry, record.expiration_time)
        slot.size += size
        self.bytes_used += size
        if source is not None:
            self._by_source[source] = self._by_source.get(source, 0) + size
        self._slots.pop(key_id, None)
        self._slots[key_id] = slot  # the most recently stored goes last
        return None

    def get(self, key_id: int, now: float) -> StoredEntry | None:
        slot = self._live(key_id, now)
        return None if slot is None else slot.snapshot()

    def size_of(self, key_id: int, now: float) -> int:
        """Bytes charged for what ``key_id`` holds (0 if nothing): an upper bound on the size of
        its entry on the wire, known before the entry is copied or encoded."""
        slot = self._live(key_id, now)
        return 0 if slot is None else slot.size

    def key_ids(self) -> list[int]:
        """Ids of the keys held (expired ones included until swept), least recently stored first."""
        return list(self._slots)

    def remove_expired(self, now: float) -> None:
        for key_id in list(self._slots):
            self._live(key_id, now)

    def items(self, now: float) -> Iterator[tuple[int, StoredEntry]]:
        """Live entries, least recently stored first (expired records are dropped first)."""
        self.remove_expired(now)
        for key_id, slot in list(self._slots.items()):
            yield key_id, slot.snapshot()

    # ---- internals ----------------------------------------------------------------------------

    def _room_for(
        self,
        key_id: int,
        slot: _Slot | None,
        replaced: list[bytes | None],
        record: DHTRecord,
        size: int,
        source: str | None,
    ) -> str | None:
        """Why ``record`` does not fit (after making room in a cache), or None if it does."""
        freed = [] if slot is None else [slot.records[subkey] for subkey in replaced]
        growth = size - sum(held.size for held in freed)
        new_subkey = slot is not None and record.subkey is not None and not replaced
        if new_subkey and self.max_subkeys is not None and len(slot.records) >= self.max_subkeys:
            return f"this key already holds {len(slot.records)} subkeys, the limit"
        if self.max_entry_bytes is not None and (slot.size if slot else 0) + growth > self.max_entry_bytes:
            return f"this key would hold more than the {self.max_entry_bytes}-byte limit for one key"
        if source is not None and self.max_bytes_per_source is not None:
            mine = self.bytes_from(source) + size - sum(h.size for h in freed if h.source == source)
            if mine > self.max_bytes_per_source:
                return (
                    f"{source} already has {self.bytes_from(source)} bytes stored here; "
                    f"the limit per source is {self.max_bytes_per_source}"
                )
        too_many_keys = self.capacity is not None and slot is None and len(self._slots) >= self.capacity
        too_many_bytes = self.max_bytes is not None and self.bytes_used + growth > self.max_bytes
        if not (too_many_keys or too_many_bytes):
            return None
        if not self.evict or (self.max_bytes is not None and size > self.max_bytes):
            what = f"{len(self._slots)} keys" if too_many_keys else f"{self.bytes_used} bytes"
            return f"storage is full ({what} held)"
        while self._slots and (
            (self.capacity is not None and slot is None and len(self._slots) >= self.capacity)
            or (self.max_bytes is not None and self.bytes_used + growth > self.max_bytes)
        ):
            oldest = next(iter(self._slots))
            if oldest == key_id:  # never evict the entry being added to; the next one goes instead
                self._slots[oldest] = self._slots.pop(oldest)
                if len(self._slots) == 1:
                    return "storage is full"
                continue
            self._drop(oldest)
        return None

    def _live(self, key_id: int, now: float) -> _Slot | None:
        """The slot under ``key_id`` after dropping its expired records (None if nothing is left)."""
        slot = self._slots.get(key_id)
        if slot is None or slot.next_expiry > now:
            return slot
        for subkey in [s for s, held in slot.records.items() if held.expiration_time <= now]:
            self._release(slot, subkey)
        if not slot.records:
            del self._slots[key_id]
            return None
        slot.next_expiry = min(held.expiration_time for held in slot.records.values())
        return slot

    def _drop(self, key_id: int) -> None:
        slot = self._slots.pop(key_id)
        for subkey in list(slot.records):
            self._release(slot, subkey)

    def _release(self, slot: _Slot, subkey: bytes | None) -> None:
        held = slot.records.pop(subkey)
        slot.size -= held.size
        self.bytes_used -= held.size
        if held.source is not None:
            left = self._by_source[held.source] - held.size
            if left:
                self._by_source[held.source] = left
            else:
                del self._by_source[held.source]
