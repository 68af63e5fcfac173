"""A node's upkeep: drop expired records, republish what it holds, hand records to newcomers,
refresh buckets.

Republishing stores every record a node holds on the current nearest replicas of its key, so
values outlive the nodes that first held them. Handing over gives a node that just entered our
table the records it is now one of the nearest replicas of (Kademlia's rule for joins: without
it, a value stored while a crowd was still joining stays on nodes that later lookups pass by).
Refreshing looks up a random id in every bucket that saw no traffic for ``refresh_interval``,
so the routing table keeps live contacts in every part of the id space. Periods are jittered
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
from .storage import DHTRecord, LocalStorage
from .traverse import LookupResult

logger = logging.getLogger(__name__)

Lookup = Callable[[list[int], int], Awaitable[dict[int, LookupResult]]]
"""Look up many targets at once, converging on ``k`` nearest nodes each."""
StoreAll = Callable[[Contact, Sequence[DHTRecord]], Awaitable[list[bool]]]


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
        spawn: Callable[[Coroutine[Any, Any, None]], None],
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
        those it is nearer to than we are and one of the nearest replicas of (as we know them)."""
        if not len(self.storage):
            return  # most nodes of a growing network hold nothing yet
        me, newcomer = self.routing_table.node_id, contact.node_id
        records: list[DHTRecord] = []
        for target, entry in self.storage.items(self.clock()):
            if newcomer ^ target < me ^ target and any(
                c.node_id == newcomer for c in self.routing_table.nearest(target, self.config.replicas)
            ):
                records.extend(entry.records())
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
