"""Joining the network through initial peers, and going back to them when every contact is lost."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

from .background import Background
from .calls import PeerCalls
from .config import DHTConfig
from .membership import Membership
from .routing import Contact
from .stats import DHTStats

logger = logging.getLogger(__name__)


class BootstrapError(ConnectionError):
    """None of the initial peers could be reached, so the node cannot join the network."""


class Joining:
    """How a node enters the network, who introduced it, and its way back after losing it all.

    A join pings the initial peers at once and looks up the node's own id (``find_self``):
    that announces the node to its nearest peers and fills its table. When the node later loses
    every contact (``Membership`` says so through :meth:`disconnected`), it asks its initial
    peers again, at once and then with jittered backoff, until one answers.
    """

    def __init__(
        self,
        node_id: int,
        *,
        config: DHTConfig,
        calls: PeerCalls,
        membership: Membership,
        stats: DHTStats,
        rng: random.Random,
        background: Background,
        find_self: Callable[[], Awaitable[object]],
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.calls = calls
        self.membership = membership
        self.stats = stats
        self.rng = rng
        self.background = background
        self.find_self = find_self
        self.initial_peers: list[str] = []
        self.introducers: list[Contact] = []
        """The initial peers that answered our last join."""
        self._reconnecting = False

    async def bootstrap(self, initial_peers: Sequence[str]) -> None:
        """Join through ``initial_peers`` (none: start a new network); raises BootstrapError."""
        self.initial_peers = list(initial_peers)
        if not initial_peers:
            return
        errors: dict[str, str] = {}
        alive = await self._reach_initial_peers(errors)
        if not alive:
            reasons = "; ".join(
                f"{peer}: {errors.get(peer, f'no answer within {self.config.bootstrap_timeout:g} s')}"
                for peer in initial_peers
            )
            raise BootstrapError(
                f"cannot join the DHT: none of the {len(initial_peers)} initial peers answered ({reasons})"
            )
        await self._join(alive)

    def disconnected(self) -> None:
        """Every contact is lost: go back to the initial peers (once at a time)."""
        if not self.initial_peers:
            logger.warning(
                "DHT node %x has no initial peers to go back to; it waits to be contacted", self.node_id
            )
        elif not self._reconnecting:
            self._reconnecting = True
            self.background.spawn(self._reconnect())

    def also_ask(self, targets: list[int]) -> dict[int, list[Contact]]:
        """Targets at a distance where we have never met anyone, and who to ask about them too.

        Peers that join at once through one initial peer only meet their own neighbourhood
        (a flash crowd of 300 left acknowledged stores unreadable): a lookup for a far target
        then converges among the nearest nodes *we* know, half the id space from the real ones,
        because the nodes we know know nobody there either. The peer that introduced us knows
        every part of the network, so such a lookup asks it too, in its first round (no extra
        round trip). Once anyone from that range has answered us the range is known and this
        costs nothing more: in steady growth, or after churn, the ranges a node has met stay
        met. Kademlia's join instead refreshes every bucket farther than the closest neighbour
        (~8x the messages of a join, measured), whether or not the node ever looks there.
        """
        membership = self.membership
        introducer = next((c for c in self.introducers if not membership.is_unresponsive(c.node_id)), None)
        if introducer is None:
            return {}
        seen = membership.ranges_seen
        unknown = [t for t in targets if not (seen >> (t ^ self.node_id).bit_length()) & 1]
        if not unknown:
            return {}
        neighbour = membership.routing_table.nearest(self.node_id, 1)
        nearest = (neighbour[0].node_id ^ self.node_id).bit_length() if neighbour else 0
        # nobody is nearer to us than our closest neighbour: those targets are ours to find
        return {t: [introducer] for t in unknown if (t ^ self.node_id).bit_length() > nearest}

    async def _reach_initial_peers(self, errors: dict[str, str]) -> list[Contact]:
        """Ping the initial peers at once; those that answered are now in the routing table."""
        try:
            async with asyncio.timeout(self.config.bootstrap_timeout):
                answers = await asyncio.gather(
                    *(self.calls.ping(peer, errors=errors) for peer in self.initial_peers)
                )
        except TimeoutError:
            answers = []
        alive = [contact for contact in answers if contact is not None]
        for contact in alive:
            self.membership.seen(contact)
        return alive

    async def _join(self, introducers: list[Contact]) -> None:
        """Announce ourselves to our nearest peers and fill our table: one lookup of our own id.

        Far ranges of distance fill as we look things up there: see :meth:`also_ask`.
        """
        self.introducers = introducers
        await self.find_self()

    async def _reconnect(self) -> None:
        """Ask the initial peers again until one answers: at once, then with jittered backoff."""
        delay = 0.0
        try:
            while not self.membership.connected:
                if delay > 0:
                    await asyncio.sleep(delay * self.rng.uniform(0.5, 1.5))
                    if self.membership.connected:  # someone contacted us meanwhile
                        break
                self.stats.reconnect_attempts += 1
                alive = await self._reach_initial_peers({})
                if alive:
                    logger.info("DHT node %x reached its initial peers again; rejoining", self.node_id)
                    await self._join(alive)
                    break
                delay = min(max(2 * delay, self.config.reconnect_delay), self.config.reconnect_max_delay)
        finally:
            self._reconnecting = False
