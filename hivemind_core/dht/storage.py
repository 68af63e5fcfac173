"""What a DHT node holds: values with expiration times, plain or as dictionaries of subkeys.

A key holds either one plain value or a dictionary whose subkeys each carry their own value and
expiration (so many servers can announce under one key). The newer expiration always wins:
a record older than what is held is refused, a newer one replaces it, and the same record again
is a no-op that counts as held. Expired data is dropped when read and swept periodically.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DHTRecord:
    """One stored item as it travels between nodes (all fields in wire form)."""

    key: bytes
    subkey: bytes | None
    value: bytes
    expiration_time: float


@dataclass(slots=True)
class StoredEntry:
    """What a node holds under one key: a plain value, or subkeys (then ``value`` is None)."""

    key: bytes
    value: bytes | None
    expiration_time: float
    subkeys: dict[bytes, tuple[bytes, float]] | None = None

    def drop_expired(self, now: float) -> bool:
        """Forget expired subkeys; True if nothing live is left."""
        if self.subkeys is not None:
            for subkey in [s for s, (_, expiration) in self.subkeys.items() if expiration <= now]:
                del self.subkeys[subkey]
            if not self.subkeys:
                return True
            self.expiration_time = max(expiration for _, expiration in self.subkeys.values())
        return self.expiration_time <= now

    def records(self) -> Iterator[DHTRecord]:
        if self.subkeys is None:
            assert self.value is not None
            yield DHTRecord(self.key, None, self.value, self.expiration_time)
        else:
            for subkey, (value, expiration) in self.subkeys.items():
                yield DHTRecord(self.key, subkey, value, expiration)


class LocalStorage:
    """Records by key id. With a ``capacity``, the least recently stored keys are evicted."""

    def __init__(self, *, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._entries: dict[int, StoredEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def store(self, key_id: int, record: DHTRecord, now: float) -> bool:
        """Keep ``record`` unless it is expired or older than what is held; True if held now."""
        if record.expiration_time <= now:
            return False
        entry = self.get(key_id, now)
        if record.subkey is None:
            if entry is not None and entry.expiration_time >= record.expiration_time:
                return (
                    entry.subkeys is None
                    and entry.value == record.value
                    and (entry.expiration_time == record.expiration_time)
                )
            entry = StoredEntry(record.key, record.value, record.expiration_time)
        else:
            if entry is None or (entry.subkeys is None and entry.expiration_time < record.expiration_time):
                entry = StoredEntry(record.key, None, record.expiration_time, subkeys={})
            elif entry.subkeys is None:
                return False  # a plain value that outlives this subkey
            held = entry.subkeys.get(record.subkey)
            if held is not None and held[1] >= record.expiration_time:
                return held == (record.value, record.expiration_time)
            assert entry.subkeys is not None
            entry.subkeys[record.subkey] = (record.value, record.expiration_time)
            entry.expiration_time = max(entry.expiration_time, record.expiration_time)
        self._entries.pop(key_id, None)
        self._entries[key_id] = entry
        if self.capacity is not None:
            while len(self._entries) > self.capacity:
                del self._entries[next(iter(self._entries))]
        return True

    def get(self, key_id: int, now: float) -> StoredEntry | None:
        entry = self._entries.get(key_id)
        if entry is not None and entry.drop_expired(now):
            del self._entries[key_id]
            return None
        return entry

    def remove_expired(self, now: float) -> None:
        for key_id in [k for k, entry in self._entries.items() if entry.drop_expired(now)]:
            del self._entries[key_id]

    def items(self, now: float) -> Iterator[tuple[int, StoredEntry]]:
        """Live entries (expired ones are skipped, not removed)."""
        for key_id, entry in list(self._entries.items()):
            if not entry.drop_expired(now):
                yield key_id, entry
