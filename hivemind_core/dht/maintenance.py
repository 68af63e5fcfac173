"""A node's upkeep: drop expired records, republish what it holds, hand records to newcomers,
refresh buckets, try lost contacts again.

Republishing stores every record a node holds on the current nearest replicas of its key, so
values outlive the nodes that first held them. Handing over gives a node that just entered our
table the records it is now one of the nearest replicas of (Kademlia's rule for joins: without
it, a value stored while a crowd was still joining stays on nodes that later lookups pass by).
A hand-over scans every key held, so on a node holding many it runs in the background, a chunk
of keys per turn of the event loop, for a bounded queue of newcomers: done inside the call that
admitted the contact it blocked the loop for about a second per join at ~100k keys.
Refreshing looks up a random id in every bucket that saw no traffic for ``refresh_interval``,
so the routing table keeps live contacts in every part of the id space; before that, the
contacts forgotten after failing are pinged again (``Membership.retry_lost``). Periods are jittered
so that a crowd of nodes started together does not act in lockstep.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from .config import DHTConfig
from .ids import random_id
from .routing import Contact, KBucket, RoutingTable
from .stats import DHTStats
from .storage import DHTRecord, LocalStorage
from .traverse import LookupResult

logger = logging.getLogger(__name__)

Lookup = Callable[[list[int], int], Awaitable[dict[int, LookupResult]]]
"""Look up many targets at once, converging on ``k`` nearest nodes each."""
StoreAll = Callable[[Contact, Sequence[DHTRecord]], Awaitable[list[bool]]]

HANDOVER_CHUNK = 256
"""Keys a hand-over looks at per turn of the event loop (a few milliseconds at most). A node
holding no more than this hands over at once, as it always did."""
MAX_WAITING_NEWCOMERS = 64
"""Newcomers waiting for a hand-over at most; past that they get theirs from the next republish."""


class Maintenance:
    """Runs a node's upkeep until cancelled; see the module docstring."""

    def __init__(
        self,
        *,
        config: DHTConfig,
        storage: LocalStorage,
        cache: LocalStorage,
        routing_table: RoutingTable,
        lookup: Lookup,
        store_all: StoreAll,
        clock: Callable[[], float],
        rng: random.Random,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        retry_lost: Callable[[], Awaitable[None]] | None = None,
        stats: DHTStats | None = None,
    ) -> None:
        self.config = config
        self.storage = storage
        self.cache = cache
        self.routing_table = routing_table
        self.lookup = lookup
        self.store_all = store_all
        self.clock = clock
        self.rng = rng
        self.spawn = spawn
        self.retry_lost = retry_lost
        """Pings the contacts the node forgot after they failed (the node's membership's)."""
        self.stats = stats or DHTStats()
        """Where newcomers handed nothing are counted (the node's own stats)."""
        self._newcomers: dict[int, Contact] = {}  # in order of arrival
        self._handing_over: asyncio.Task[Any] | None = None

    @property
    def handover_backlog(self) -> int:
        """Newcomers whose hand-over is under way or waiting in the background."""
        return len(self._newcomers)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(self.config.refresh_interval, self.config.republish_interval) / 4
        next_republish = loop.time() + self.config.republish_interval * self.rng.uniform(0.5, 1.0)
        while True:
            await asyncio.sleep(period * self.rng.uniform(0.9, 1.1))
            try:
                now = self.clock()
                self.storage.remove_expired(now)
                self.cache.remove_expired(now)
                if loop.time() >= next_republish:
                    next_republish = loop.time() + self.config.republish_interval * self.rng.uniform(0.9, 1.1)
                    await self.republish()
                if self.retry_lost is not None:
                    await self.retry_lost()
                stale = self.routing_table.stale_buckets(loop.time(), self.config.refresh_interval)
                await self.refresh(stale)
            except Exception:
                logger.exception("DHT maintenance failed; it will run again")

    async def refresh(self, buckets: list[KBucket]) -> None:
        """Look up a random id in each bucket, to learn live contacts there."""
        if not buckets:
            return
        targets = [random_id(self.rng, bucket.lower, bucket.upper) for bucket in buckets]
        await self.lookup(targets, self.config.k)
        now = asyncio.get_running_loop().time()
        for bucket in buckets:
            bucket.last_updated = now

    def newcomer(self, contact: Contact) -> None:
        """``contact`` just entered our routing table: hand it the records it should now hold,
        those it is nearer to than we are and one of the nearest replicas of (as we know them).

        Called from the path that admits a contact, so it does a bounded amount of work: one
        chunk of keys at once, anything larger in the background (see the module docstring).
        """
        if not len(self.storage):
            return  # most nodes of a growing network hold nothing yet
        if self._handing_over is None and len(self.storage) <= HANDOVER_CHUNK:
            now = self.clock()
            self.storage.remove_expired(now)
            self._send(contact, self._records_for(contact, self.storage.key_ids(), now))
            return
        if contact.node_id in self._newcomers:
            return
        if len(self._newcomers) >= MAX_WAITING_NEWCOMERS:
            self.stats.handovers_skipped += 1
            logger.debug("no hand-over for %s: too many newcomers wait", contact.endpoint)
            return
        self._newcomers[contact.node_id] = contact
        if self._handing_over is None:
            self._handing_over = self.spawn(self._hand_over_waiting())

    async def _hand_over_waiting(self) -> None:
        """Hand over to each waiting newcomer in turn, a chunk of keys per turn of the loop."""
        try:
            while self._newcomers:
                contact = next(iter(self._newcomers.values()))
                keys = self.storage.key_ids()
                records: list[DHTRecord] = []
                for start in range(0, len(keys), HANDOVER_CHUNK):
                    await asyncio.sleep(0)  # let the loop serve others between chunks
                    records += self._records_for(contact, keys[start : start + HANDOVER_CHUNK], self.clock())
                self._send(contact, records)
                del self._newcomers[contact.node_id]
        finally:
            self._handing_over = None

    def _records_for(self, contact: Contact, keys: list[int], now: float) -> list[DHTRecord]:
        """The records under ``keys`` that ``contact`` should now hold (see :meth:`newcomer`)."""
        me, newcomer = self.routing_table.node_id, contact.node_id
        records: list[DHTRecord] = []
        for target in keys:
            if newcomer ^ target < me ^ target and any(
                c.node_id == newcomer for c in self.routing_table.nearest(target, self.config.replicas)
            ):
                entry = self.storage.get(target, now)
                if entry is not None:
                    records.extend(entry.records())
        return records

    def _send(self, contact: Contact, records: list[DHTRecord]) -> None:
        if records:
            self.spawn(self._hand_over(contact, records))

    async def _hand_over(self, contact: Contact, records: list[DHTRecord]) -> None:
        await self.store_all(contact, records)

    async def republish(self) -> None:
        """Store everything this node holds on the current nearest replicas of each key."""
        now = self.clock()
        by_id = {target: list(entry.records()) for target, entry in self.storage.items(now)}
        if not by_id:
            return
        lookups = await self.lookup(list(by_id), self.config.replicas)
        plan: dict[int, tuple[Contact, list[DHTRecord]]] = {}
        for target, records in by_id.items():
            for contact in lookups[target].nearest[: self.config.replicas]:
                plan.setdefault(contact.node_id, (contact, []))[1].extend(records)
        await asyncio.gather(*(self.store_all(contact, records) for contact, records in plan.values()))
