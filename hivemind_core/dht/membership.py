"""Who this node knows: the routing table, kept truthful by every exchange.

Requesters that listen (and announce an endpoint on the host their request came from) and
responders are recorded as alive; a newcomer to a full bucket waits while the least recently
seen contact is pinged (Kademlia's preference for long-lived peers); a contact whose RPC failed
is forgotten. Every announced endpoint is checked by the transport before it enters the table,
so a lie cannot make later lookups dial an address that does not parse.
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
from .ids import ID_BITS, node_id_for
from .routing import Contact, RoutingTable

logger = logging.getLogger(__name__)

Ping = Callable[[Contact], Awaitable[bool]]
"""True if the contact answered (as the same node)."""


class Membership:
    """The routing table and the rules for changing it; see the module docstring."""

    def __init__(
        self,
        node_id: int,
        *,
        config: DHTConfig,
        transport: Transport,
        background: Background,
        ping: Ping,
        on_new_contact: Callable[[Contact], None] = lambda contact: None,
    ) -> None:
        self.node_id = node_id
        self.transport = transport
        self.background = background
        self.ping = ping
        self.on_new_contact = on_new_contact
        """Called when a contact enters the table that was not in it before."""
        self.routing_table = RoutingTable(node_id, k=config.k, max_per_subnet=config.max_per_subnet)
        self._pinging: set[int] = set()

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
        table = self.routing_table
        known = contact.node_id in table
        stale = table.add(contact, asyncio.get_running_loop().time())
        if not known and contact.node_id in table:
            self.on_new_contact(contact)
        if stale is not None and stale.node_id not in self._pinging:
            self._pinging.add(stale.node_id)
            self.background.spawn(self._ping_or_evict(stale))

    def failed(self, contact: Contact) -> None:
        """``contact`` missed an RPC: forget it (a replacement takes its place)."""
        self.routing_table.remove(contact.node_id)

    def unknown_distances(self, closest: int) -> list[int]:
        """Distance ranges [2**j, 2**(j+1)) farther than ``closest`` where we know nobody.

        Kademlia's invariant is that a node knows someone in every range of distance where
        nodes exist: a lookup for a target there starts from that contact. Ranges nearer than
        our closest neighbour are empty by definition.
        """
        known = {(contact.node_id ^ self.node_id).bit_length() - 1 for contact in self.routing_table}
        return [j for j in range(closest.bit_length(), ID_BITS) if j not in known]

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
                self.routing_table.remove(stale.node_id)
        finally:
            self._pinging.discard(stale.node_id)
