"""Reading values: this node's own records first, then a lookup that stops at the first answer.

What a lookup brings back is checked (:class:`RecordRules`) and merged by the same rules as
storage (the newer expiration wins, a dictionary's subkeys add up), then decoded for the user.
A value found is also copied to the nearest node on the path that answered without it, so a
popular key spreads towards where lookups for it come from.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from .background import Background
from .calls import PeerCalls
from .config import DHTConfig
from .ids import deserialize_key, key_id, serialize_key
from .lookups import Lookups
from .routing import Contact
from .stats import DHTStats
from .storage import DHTRecord, LocalStorage, StoredEntry
from .traverse import LookupResult
from .validation import RecordRules

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ValueWithExpiration:
    """A value read from the DHT; for dictionary keys, ``value`` maps subkeys to these."""

    value: Any
    expiration_time: float


class Reads:
    """``get_many`` for :class:`DHTNode`; see the module docstring."""

    def __init__(
        self,
        *,
        config: DHTConfig,
        rules: RecordRules,
        storage: LocalStorage,
        cache: LocalStorage,
        lookups: Lookups,
        calls: PeerCalls,
        clock: Callable[[], float],
        background: Background,
        stats: DHTStats,
    ) -> None:
        self.config = config
        self.rules = rules
        self.storage = storage
        self.cache = cache
        self.lookups = lookups
        self.calls = calls
        self.clock = clock
        self.background = background
        self.stats = stats

    async def get_many(
        self, keys: Sequence[Any], *, latest: bool, timeout: float | None
    ) -> list[ValueWithExpiration | None]:
        """See :meth:`DHTNode.get_many`."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout}")
        serialized = [serialize_key(key) for key in keys]
        ids = [key_id(key_bytes) for key_bytes in serialized]
        key_bytes = dict(zip(ids, serialized, strict=True))
        now = self.clock()
        found: dict[int, LocalStorage] = {}
        pending = []
        for target in key_bytes:
            local = self.storage.get(target, now) or self.cache.get(target, now)
            if local is not None:
                self._merge(found, target, local, now, checked=True)
            if latest or target not in found:
                pending.append(target)
        holders: dict[int, set[int]] = {}

        def on_found(target: int, contact: Contact, entry: StoredEntry) -> bool:
            if entry.key != key_bytes[target] or not self._merge(found, target, entry, self.clock()):
                return False
            holders.setdefault(target, set()).add(contact.node_id)
            return not latest

        lookups = await self.lookups.run(pending, k=self.config.k, on_found=on_found, timeout=timeout)
        if not latest:
            self._cache_along_path(lookups, found, holders)
        return [self._decode(found.get(target), now) for target in ids]

    def _merge(
        self,
        found: dict[int, LocalStorage],
        target: int,
        entry: StoredEntry,
        now: float,
        *,
        checked: bool = False,
    ) -> bool:
        """Add the valid records of ``entry`` (held under ``target``) to what we found; True if any.

        ``checked``: the entry comes from this node's storage or cache, whose every record passed
        the rules on its way in, so they are not checked again. Only the first ``max_subkeys``
        records are looked at: no honest node holds more, and checking millions of tiny records
        from one lying answer would stall the loop.
        """
        merged = found.get(target)
        accepted = False
        for record in itertools.islice(entry.records(), self.config.max_subkeys):
            if not checked and self.rules.check(record, now) is not None:
                continue
            if merged is None:  # bounded like a replica, so a lying answer cannot grow it further
                merged = found[target] = LocalStorage.for_replicas(self.config)
            accepted |= merged.store(target, record, now)
        return accepted

    def _decode(self, merged: LocalStorage | None, now: float) -> ValueWithExpiration | None:
        """The user's view of what was found. A value that cannot be decoded is dropped, counted
        and logged; under a dictionary key only that subkey goes, so one bad writer cannot hide
        what everyone else announced there."""
        if merged is None:
            return None
        decoded: dict[Any, ValueWithExpiration] = {}
        for _, entry in merged.items(now):
            for record in entry.records():
                try:
                    value = msgpack.unpackb(self.rules.strip(record), raw=False)
                except Exception as error:
                    self.stats.undecodable_values += 1
                    logger.warning("dropping a value under %r that cannot be decoded: %s", record.key, error)
                    continue
                decoded[_unpack_key(record.subkey)] = ValueWithExpiration(value, record.expiration_time)
        if not decoded:
            return None
        if None in decoded:
            return decoded[None]
        return ValueWithExpiration(decoded, max(item.expiration_time for item in decoded.values()))

    def _cache_along_path(
        self, lookups: dict[int, LookupResult], found: dict[int, LocalStorage], holders: dict[int, set[int]]
    ) -> None:
        """Store found values on the nearest node that answered without having them."""
        now = self.clock()
        plan: dict[int, tuple[Contact, list[tuple[DHTRecord, bool]]]] = {}
        for target, result in lookups.items():
            merged = found.get(target)
            if merged is None or target not in holders:
                continue
            closest_without = next((c for c in result.nearest if c.node_id not in holders[target]), None)
            if closest_without is None:
                continue
            for _, entry in merged.items(now):
                records = [(record, True) for record in entry.records()]
                plan.setdefault(closest_without.node_id, (closest_without, []))[1].extend(records)
        for contact, records in plan.values():
            self.background.spawn(self.calls.store(contact, records[: self.config.max_batch]))


def _unpack_key(subkey: bytes | None) -> Any:
    """A subkey as it was written (sequences as tuples); stored subkeys passed ``RecordRules``."""
    return None if subkey is None else deserialize_key(subkey)
