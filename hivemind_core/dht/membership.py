"""Who this node knows: the routing table, kept truthful by every exchange.

Requesters that listen (and announce an endpoint on the host their request came from) and
responders are recorded as alive; a newcomer to a full bucket waits while the least recently
seen contact is pinged (Kademlia's preference for long-lived peers); a contact whose RPC failed
is forgotten. Every announced endpoint is checked by the transport before it enters the table,
so a lie cannot make later lookups dial an address that does not parse.

A contact that failed an RPC, or that a lookup waited on until its deadline, is *unresponsive*
for ``unresponsive_time``: lookups skip it, so a frozen peer costs one lookup its deadline, not
every lookup. Hearing from it forgives it. When no responsive contact is left the node is
*disconnected* (a WARNING says so once, and ``on_disconnected`` lets the node go back to its
initial peers); the first contact it hears from again reconnects it.

A contact forgotten because it failed is kept aside, the last ``k`` of them: maintenance pings
those whose bucket has room again (:meth:`retry_lost`). Kademlia keeps a failed contact that
nothing replaces so that a node whose own network went down does not void its table; without
this, both sides of a healed partition, or a node that lost every contact and has no initial
peers, would never hear of each other again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..net import Transport
from .background import Background
from .codec import decode_node
from .config import DHTConfig
from .ids import node_id_for
from .routing import Contact, RoutingTable
from .stats import DHTStats

logger = logging.getLogger(__name__)

Ping = Callable[[Contact], Awaitable[bool]]
"""True if the contact answered (as the same node)."""

MAX_UNRESPONSIVE = 1024
"""Unresponsive contacts remembered at most (the longest remembered are forgotten first): a peer
answering with made-up contacts that never answer cannot grow this without bound."""


class Membership:
    """The routing table and the rules for changing it; see the module docstring."""

    def __init__(
        self,
        node_id: int,
        *,
        config: DHTConfig,
        transport: Transport,
        background: Background,
        stats: DHTStats,
        ping: Ping,
        on_new_contact: Callable[[Contact], None] = lambda contact: None,
        on_disconnected: Callable[[], None] = lambda: None,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.transport = transport
        self.background = background
        self.stats = stats
        self.ping = ping
        self.on_new_contact = on_new_contact
        """Called when a contact enters the table that was not in it before."""
        self.on_disconnected = on_disconnected
        """Called when the last responsive contact is lost."""
        self.routing_table = RoutingTable(node_id, k=config.k, max_per_subnet=config.max_per_subnet)
        self._connected = True
        self._reconnected: asyncio.Event | None = None
        """Set when the node connects again; made only while someone waits (see wait_connected)."""
        self.ranges_seen = 0
        """Bit ``b`` is set once a contact at a distance of bit length ``b`` entered the table:
        ranges of distance where this node has met someone since it started."""
        # plain dicts: insertion-ordered like OrderedDict at half its size, and a node keeps
        # these for its whole life (a simulation holds one per peer, mostly empty)
        self._pinging: dict[int, None] = {}
        self._unresponsive: dict[int, float] = {}  # node id -> skipped until (loop time), oldest first
        self._lost: dict[int, Contact] = {}  # forgotten after failing, latest last

    @property
    def connected(self) -> bool:
        """False while no contact in the table is responsive (see the module docstring)."""
        return self._connected

    async def wait_connected(self) -> None:
        """Return once the node is connected (at once if it is)."""
        if self._connected:
            return
        if self._reconnected is None:
            self._reconnected = asyncio.Event()
        await self._reconnected.wait()

    def observe_requester(self, peer: str, raw_sender: Any) -> int:
        """Learn about whoever sent a request from ``peer``; returns its node id.

        Raises ValueError if the sender field is malformed. A requester is added only if it
        listens at a valid endpoint on the host the request came from: anyone may say anything
        about itself, but only an address it actually uses is worth dialling.
        """
        public_key, endpoint = decode_node(raw_sender, "sender")
        node_id = node_id_for(public_key)
        if endpoint is not None and self._reachable(endpoint) and self.transport.same_host(endpoint, peer):
            self.seen(Contact(node_id, endpoint, public_key))
        return node_id

    def seen(self, contact: Contact) -> None:
        """``contact`` just proved alive."""
        if self._unresponsive:
            self._unresponsive.pop(contact.node_id, None)
        self._lost.pop(contact.node_id, None)
        table = self.routing_table
        entered, stale = table.admit(contact, asyncio.get_running_loop().time())
        if stale is not None and stale.node_id not in self._pinging:
            self._pinging[stale.node_id] = None
            self.background.spawn(self._ping_or_evict(stale))
        if not self._connected and (entered or contact.node_id in table):
            self._connected = True
            if self._reconnected is not None:
                self._reconnected.set()
                self._reconnected = None
            logger.info("DHT node %x is connected again (through %s)", self.node_id, contact.endpoint)
        if entered:
            self.ranges_seen |= 1 << (contact.node_id ^ self.node_id).bit_length()
            self.on_new_contact(contact)

    def failed(self, contact: Contact) -> None:
        """``contact`` failed an RPC: forget it (a replacement takes its place), skip it, and keep
        it aside to try again later (see the module docstring)."""
        self.routing_table.remove(contact.node_id)
        self._lost.pop(contact.node_id, None)
        self._lost[contact.node_id] = contact
        while len(self._lost) > self.config.k:
            del self._lost[next(iter(self._lost))]
        self.unresponsive(contact)

    def unresponsive(self, contact: Contact) -> None:
        """``contact`` kept us waiting in vain: lookups skip it for ``unresponsive_time``."""
        now = asyncio.get_running_loop().time()
        skipped = self._unresponsive
        skipped.pop(contact.node_id, None)
        skipped[contact.node_id] = now + self.config.unresponsive_time
        while len(skipped) > MAX_UNRESPONSIVE:
            del skipped[next(iter(skipped))]
        while skipped and skipped[first := next(iter(skipped))] <= now:
            del skipped[first]  # the oldest lead, so the expired ones go now, not when asked about
        if self._connected and not any(not self.is_unresponsive(c.node_id) for c in self.routing_table):
            self._connected = False
            self.stats.disconnections += 1
            if len(self.routing_table) == 0 and list(self._lost) == [contact.node_id]:
                # a peer whose one contact (say, the client it served) left: normal, not an alarm
                logger.info(
                    "DHT node %x has no contact now: its only one, %s, stopped answering",
                    self.node_id,
                    contact.endpoint,
                )
            else:
                logger.warning(
                    "DHT node %x lost every contact (%d in its table, none answering)",
                    self.node_id,
                    len(self.routing_table),
                )
            self.on_disconnected()

    def skip(self) -> Callable[[int], bool] | None:
        """What a lookup should skip: :meth:`is_unresponsive`, or None while nobody is."""
        return self.is_unresponsive if self._unresponsive else None

    def is_unresponsive(self, node_id: int) -> bool:
        """Whether lookups should skip ``node_id`` for now."""
        until = self._unresponsive.get(node_id)
        if until is None:
            return False
        if asyncio.get_running_loop().time() < until:
            return True
        del self._unresponsive[node_id]
        return False

    async def retry_lost(self) -> None:
        """Ping the lost contacts no longer skipped whose bucket has room: those that answer
        come back into the table, the others wait for the next try."""
        table = self.routing_table
        due = [
            contact
            for contact in self._lost.values()
            if not self.is_unresponsive(contact.node_id)
            and len(table.bucket_for(contact.node_id).contacts) < table.k
        ]
        await asyncio.gather(*(self._ping_or_evict(contact) for contact in due))

    def _reachable(self, endpoint: str) -> bool:
        try:
            self.transport.check_endpoint(endpoint)
        except ValueError as error:
            logger.debug("ignoring a peer announcing %r: %s", endpoint, error)
            return False
        return True

    async def _ping_or_evict(self, stale: Contact) -> None:
        try:
            if not await self.ping(stale):
                self.failed(stale)
        finally:
            self._pinging.pop(stale.node_id, None)
