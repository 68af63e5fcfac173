"""Storing values: each item becomes a checked, signed record, stored on its nearest replicas."""

from __future__ import annotations

import asyncio
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from .calls import PeerCalls
from .config import DHTConfig
from .ids import key_id, serialize_key
from .lookups import Lookups
from .routing import Contact
from .storage import DHTRecord, LocalStorage
from .validation import RecordRules


@dataclass(frozen=True)
class StoreItem:
    key: Any
    value: Any
    expiration_time: float
    subkey: Any = None


class Writes:
    """``store_many`` for :class:`DHTNode`: one batched lookup finds every item's replicas."""

    def __init__(
        self,
        node_id: int,
        *,
        config: DHTConfig,
        rules: RecordRules,
        storage: LocalStorage,
        lookups: Lookups,
        calls: PeerCalls,
        clock: Callable[[], float],
        listening: Callable[[], bool],
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.rules = rules
        self.storage = storage
        self.lookups = lookups
        self.calls = calls
        self.clock = clock
        self.listening = listening
        """Whether others can reach this node (a client-mode node holds no replicas)."""

    async def store_many(self, items: Sequence[StoreItem]) -> list[bool]:
        """See :meth:`DHTNode.store_many`."""
        records = [self.prepare(item) for item in items]
        now = self.clock()
        by_id: dict[int, list[int]] = {}
        for index, record in enumerate(records):
            if record.expiration_time > now:
                by_id.setdefault(key_id(record.key), []).append(index)
        stored = [False] * len(records)
        lookups = await self.lookups.run(list(by_id), k=self.config.replicas)
        plan: dict[int, tuple[Contact, list[int]]] = {}
        for target, indices in by_id.items():
            replicas = lookups[target].nearest[: self.config.replicas]
            for contact in replicas:
                plan.setdefault(contact.node_id, (contact, []))[1].extend(indices)
            if self._should_hold(target, replicas):
                for index in indices:
                    stored[index] |= self.storage.store(target, records[index], now)
        answers = await asyncio.gather(
            *(
                self.calls.store_all(contact, [records[i] for i in indices])
                for contact, indices in plan.values()
            )
        )
        for (_, indices), held in zip(plan.values(), answers, strict=True):
            for index, ok in zip(indices, held, strict=True):
                stored[index] |= ok
        for target, indices in by_id.items():
            if not lookups[target].converged:  # not where a lookup from elsewhere would look
                for index in indices:
                    stored[index] = False
        return stored

    def prepare(self, item: StoreItem) -> DHTRecord:
        """The signed record for ``item``; raises TypeError or ValueError naming what is wrong.

        The rules run once, on the signed record, so an expiration out of bounds is refused
        there (after the signing it made useless: rare, and only for this node's own mistake).
        """
        key = serialize_key(item.key)
        subkey = None if item.subkey is None else serialize_key(item.subkey)
        expiration = item.expiration_time
        if isinstance(expiration, bool) or not isinstance(expiration, numbers.Real):
            raise TypeError(f"expiration_time must be a number, got {type(expiration).__name__}")
        try:
            value = msgpack.packb(item.value, use_bin_type=True)
            msgpack.unpackb(value, raw=False)  # what could not be read back must not be stored
        except (TypeError, ValueError, OverflowError) as error:
            raise TypeError(f"cannot store a value msgpack cannot encode and decode: {error}") from None
        try:
            expiration = float(expiration)
        except OverflowError:
            expiration = math.inf  # an integer beyond any float: refused below as not finite
        record = self.rules.sign(DHTRecord(key, subkey, value, expiration))
        reason = self.rules.check(record, self.clock(), own=True)
        if reason is not None:
            raise ValueError(f"cannot store under {item.key!r}: {reason}")
        return record

    def _should_hold(self, target: int, replicas: list[Contact]) -> bool:
        """Whether this node is itself among the nearest replicas of ``target``."""
        if not self.listening():
            return False
        if len(replicas) < self.config.replicas:
            return True
        return self.node_id ^ target < replicas[-1].node_id ^ target
