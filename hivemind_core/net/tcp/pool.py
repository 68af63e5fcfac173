"""The outgoing connections of a TCP transport: one per remote endpoint, dialled on demand.

``max_outgoing`` is a hard cap: at the limit the least recently used idle connection is closed
to make room, and when every one is busy a new dial waits for a slot (bounded by
``connect_timeout``). Only dials past that wait hold a slot, and a connection fresh from a dial
is not evicted while requests still wait for it (concurrent dials to more peers than the pool
holds used to evict each other's new connections over and over). Concurrent dials to one peer
are merged; a dial that every requester gave up on is cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from typing import TYPE_CHECKING

from ..endpoints import parse_endpoint
from ..errors import PeerUnavailable, RequestTimeout, TransportClosed
from ..transport import Endpoint
from . import sockets
from .connection import Connection

if TYPE_CHECKING:
    from .transport import TcpTransport


class Pool:
    """Outgoing connections by endpoint, the dials in progress, and the waits for a slot."""

    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner
        self.connections: dict[Endpoint, Connection] = {}
        self.dials: dict[Endpoint, asyncio.Task[Connection]] = {}
        self.slot_waiters: list[asyncio.Future[None]] = []  # dials waiting for a free slot
        self._dial_waiters: collections.Counter[Endpoint] = collections.Counter()  # requests awaiting a dial
        self._dialing: set[Endpoint] = set()  # dials that hold a slot of the pool (past the wait for one)

    async def open(self, peer: Endpoint, deadline: float) -> Connection:
        """A writable connection to ``peer``, dialling one if needed (see the module docstring).

        A connection fresh from a dial is idle until its requesters resume, so a full pool
        does not evict a connection that requesters still wait for. A closed connection is
        never handed out (the request would wait for its whole timeout), so that case dials again.
        """
        loop = asyncio.get_running_loop()
        host, port = parse_endpoint(peer)
        while True:
            connection = self.connections.get(peer)
            if connection is not None and connection.writable:
                return connection
            task = self.dials.get(peer)
            if task is None:
                task = loop.create_task(self._connect(peer, host, port))
                self.dials[peer] = task
                task.add_done_callback(lambda done: self._dial_finished(peer, done))
            self._dial_waiters[peer] += 1
            try:
                # asyncio.wait, not asyncio.timeout: it needs no task of its own, so a handler's
                # first step may dial while it runs eagerly, and the dial outlives this wait
                if not task.done():
                    await asyncio.wait((task,), timeout=deadline - loop.time())
                if not task.done():
                    raise RequestTimeout(f"connecting to {peer} took longer than the request's timeout")
                connection = task.result()
            finally:
                self._dial_waiters[peer] -= 1
                if not self._dial_waiters[peer]:
                    del self._dial_waiters[peer]
                    if not task.done():  # nobody waits for this connection any more
                        task.cancel()
                        if self.dials.get(peer) is task:
                            del self.dials[peer]  # a later request dials afresh
            if connection.writable:
                return connection

    def lost(self, connection: Connection) -> None:
        """``connection`` (an outgoing one) closed: its slot is free."""
        if self.connections.get(connection.peer) is connection:
            del self.connections[connection.peer]
        self.wake_slot_waiter()

    def wake_slot_waiter(self) -> None:
        """A slot may be free (a connection closed or went idle): let one waiting dial check."""
        while self.slot_waiters:
            waiter = self.slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, peer: Endpoint, host: str, port: int) -> Connection:
        owner = self.owner
        timeout = owner.config.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._make_room(peer)
                self._dialing.add(peer)
                try:
                    connection = await self._dial(peer, host, port)
                except BaseException:
                    self.wake_slot_waiter()  # the slot this dial held is free again
                    raise
                finally:
                    self._dialing.discard(peer)  # the connection, if any, holds the slot now
        except TimeoutError:
            raise PeerUnavailable(
                f"connecting to {peer} timed out after {timeout:g} s "
                f"(or all {owner.config.max_outgoing} outgoing connections stayed busy)"
            ) from None
        except OSError as error:
            raise PeerUnavailable(f"cannot connect to {peer}: {error.strerror or error}") from None
        if owner._closing:
            if connection.transport is not None:
                connection.transport.close()
            raise TransportClosed("transport closed while connecting")
        self.connections[peer] = connection
        owner._ensure_sweeper()
        return connection

    async def _dial(self, peer: Endpoint, host: str, port: int) -> Connection:
        """A new connection to ``peer``; with emulated delays, set up in their round trip."""
        owner = self.owner
        delays = owner.config.delays
        delay = delays.to(peer) if delays is not None else None
        # dial from the address we listen on, so peers see requests from the host we announce
        source = sockets.source_address(owner.config.host, host) if owner.listening else None
        factory = functools.partial(Connection, owner, peer, incoming=False)
        if not delay:
            return await sockets.dial(factory, host, port, source=source)
        await asyncio.sleep(delay.there)  # the SYN on its way
        connection = await sockets.dial(factory, host, port, source=source)
        try:
            await asyncio.sleep(delay.back)  # the SYN-ACK on its way back
        except BaseException:
            if connection.transport is not None:
                connection.transport.abort()
            raise
        return connection

    def _dial_finished(self, peer: Endpoint, task: asyncio.Task[Connection]) -> None:
        if self.dials.get(peer) is task:
            del self.dials[peer]
        if not task.cancelled():
            task.exception()  # retrieved here so an abandoned failed dial is not reported twice

    async def _make_room(self, peer: Endpoint) -> None:
        """Keep outgoing connections within ``max_outgoing``.

        At the limit, the least recently used idle connection is closed; when every one is
        busy, wait until one becomes idle or closes (the caller bounds the wait).
        """
        limit = self.owner.config.max_outgoing
        while True:
            others = len(self.connections) + len(self._dialing) - (peer in self._dialing)
            if others < limit:
                return
            idle = [c for c in self.connections.values() if c.idle and c.peer not in self._dial_waiters]
            if idle:
                oldest = min(idle, key=lambda c: c.last_active)
                del self.connections[oldest.peer]
                if oldest.transport is not None:
                    oldest.transport.close()
                return
            waiter = asyncio.get_running_loop().create_future()
            self.slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.slot_waiters:
                    self.slot_waiters.remove(waiter)
