"""Remote hosts take turns at handing requests over, so one greedy peer cannot take the loop.

In each round a host may hand over ``REQUESTS_PER_ROUND`` requests over all its connections,
each connection ``REQUESTS_PER_TURN`` at a time: new data is dispatched at once while its host
has credit left, and otherwise queues behind the other hosts. A round ends at the next pass of
the event loop once a host has used up its credit or waits for a turn. So a host with many
connections or a deep pipeline gets as much of the loop per round as one that sends a single
request, and that one waits at most a round for its turn.

A host is an address, or an IPv6 /64 (one site's block): the per-host connection limit counts
the same way (``Host.incoming``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
from typing import TYPE_CHECKING

from ..endpoints import canonical_host, ip_of

if TYPE_CHECKING:
    from .connection import Connection

REQUESTS_PER_TURN = 16  # requests one connection hands over before another gets a turn
REQUESTS_PER_ROUND = 64  # requests one host hands over per round, over all its connections


@functools.lru_cache(maxsize=4096)
def host_key(host: str) -> str:
    """Whom a connection counts against: its address, or its /64 for IPv6 (one site's block)."""
    host = canonical_host(host)
    address = ip_of(host)
    if isinstance(address, ipaddress.IPv6Address) and not address.is_loopback:
        return f"{ipaddress.IPv6Network((address, 64), strict=False).network_address}/64"
    return host


class Host:
    """The connections to and from one remote host: how many, and which wait for a turn."""

    __slots__ = ("connections", "credit", "in_turns", "incoming", "name", "ready", "round")

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self.incoming = 0
        self.ready: collections.deque[Connection] = collections.deque()
        self.in_turns = False  # in the queue of hosts waiting for a turn
        self.round = -1  # the round ``credit`` belongs to
        self.credit = 0  # requests it may still hand over in that round


class Turns:
    """The hosts with open connections, and the rounds in which they take turns."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self._queue: collections.deque[Host] = collections.deque()  # hosts waiting for a turn
        self._round = 0
        self._round_scheduled = False

    def incoming_from(self, key: str) -> int:
        """Open incoming connections from the host ``key``."""
        host = self.hosts.get(key)
        return host.incoming if host is not None else 0

    def admit(self, connection: Connection) -> None:
        """Count ``connection`` against its host (``connection.host``) from now on."""
        host = self.hosts.get(connection.host)
        if host is None:
            host = self.hosts[connection.host] = Host(connection.host)
        host.connections += 1
        host.incoming += connection.incoming
        connection.host_state = host

    def release(self, connection: Connection) -> None:
        """``connection`` closed: it no longer counts against its host."""
        host = connection.host_state
        if host is not None:
            connection.host_state = None
            host.connections -= 1
            host.incoming -= connection.incoming
            self._forget(host)

    def hand_over(self, connection: Connection) -> None:
        """New data arrived on ``connection``: dispatch it now if its host has credit left."""
        host = connection.host_state
        assert host is not None
        if host.round != self._round:
            host.round, host.credit = self._round, REQUESTS_PER_ROUND
        credit = host.credit
        if host.in_turns or not credit:
            self.want_turn(connection)
            connection.update_reading()
            return
        credit -= connection.dispatch(credit if credit < REQUESTS_PER_TURN else REQUESTS_PER_TURN)
        host.credit = credit
        if not credit:  # a new round gives every host new credit
            self._schedule_round()

    def want_turn(self, connection: Connection) -> None:
        """Queue ``connection`` for its host's next turn (once)."""
        host = connection.host_state
        if connection.waiting_turn or host is None:
            return
        connection.waiting_turn = True
        host.ready.append(connection)
        if not host.in_turns:
            host.in_turns = True
            self._queue.append(host)
        self._schedule_round()

    def _schedule_round(self) -> None:
        if not self._round_scheduled:
            self._round_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_round)

    def _next_round(self) -> None:
        """Start a round: every waiting host hands over frames from its waiting connections."""
        self._round_scheduled = False
        self._round += 1
        for _ in range(len(self._queue)):
            host = self._queue.popleft()
            host.round, credit = self._round, REQUESTS_PER_ROUND
            while host.ready and credit:
                connection = host.ready.popleft()
                connection.waiting_turn = False
                credit -= connection.dispatch(min(credit, REQUESTS_PER_TURN))  # may queue it again
            host.credit = credit
            if host.ready:
                self._queue.append(host)
            else:
                host.in_turns = False
                self._forget(host)
        if self._queue:
            self._schedule_round()

    def _forget(self, host: Host) -> None:
        if not (host.connections or host.in_turns):
            self.hosts.pop(host.name, None)
