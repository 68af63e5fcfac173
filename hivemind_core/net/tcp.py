"""TcpTransport: frames over real TCP sockets with asyncio.

One persistent connection per remote endpoint carries any number of concurrent requests
(multiplexed by request id). Incoming connections are capped; outgoing ones are pooled, and
idle ones are closed so a peer that talks to thousands of others keeps few sockets open. A
peer that sends garbage loses only its own connection, with the reason in the log.

This module and the real compute executor are the only places in ``hivemind_core`` allowed
to touch sockets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from .errors import PeerUnavailable, RequestTimeout, TransportClosed
from .frames import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, KIND_AND_ID, PREFIX, FrameKind, encode_header
from .multiplex import FramedTransport, Link
from .transport import Endpoint, RequestHandler

logger = logging.getLogger(__name__)

_COALESCE_LIMIT = 64 * 1024  # payloads below this are copied into one write with their header


def parse_endpoint(endpoint: Endpoint) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6addr]:port"`` to (host, port), with a clear error if malformed."""
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid endpoint {endpoint!r}: expected 'host:port' or '[ipv6]:port'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def format_endpoint(host: str, port: int) -> Endpoint:
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    return f"[{host}]:{port}" if is_v6 else f"{host}:{port}"


def _canonical_host(host: str) -> str:
    """One spelling per address (an IPv4-mapped IPv6 address is its IPv4 address); names as given."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


class _Connection(asyncio.Protocol):
    """One TCP connection: splits the byte stream into frames and handles flow control."""

    def __init__(self, owner: TcpTransport, peer: Endpoint | None, *, incoming: bool) -> None:
        self.owner = owner
        self.peer = peer or "?"
        self.incoming = incoming
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.loop = asyncio.get_running_loop()
        self.last_active = self.loop.time()
        self.pending = 0
        self.serving = 0
        self.dropped = False
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._write_paused = False
        self._read_paused = False

    @property
    def writable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    @property
    def idle(self) -> bool:
        return self.pending == 0 and self.serving == 0

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.incoming:
            peername = transport.get_extra_info("peername")
            self.peer = format_endpoint(peername[0], peername[1]) if peername else "?"
        self.owner._connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.dropped:
            return
        self.last_active = self.loop.time()
        buffer = self.buffer
        buffer += data
        limit = self.owner.max_frame_size
        offset, end = 0, len(buffer)
        while end - offset >= PREFIX.size:
            (length,) = PREFIX.unpack_from(buffer, offset)
            if length + PREFIX.size > limit:
                size = length + PREFIX.size
                self.owner._drop(self, f"frame of {size} bytes exceeds the {limit}-byte limit")
                return
            if length < KIND_AND_ID.size:
                self.owner._drop(self, f"frame length {length} is shorter than the frame header")
                return
            if end - offset - PREFIX.size < length:
                break
            kind, request_id = KIND_AND_ID.unpack_from(buffer, offset + PREFIX.size)
            with memoryview(buffer) as view:
                payload = bytes(view[offset + HEADER_SIZE : offset + PREFIX.size + length])
            offset += PREFIX.size + length
            self.owner._frame_received(self, kind, request_id, payload)
            if self.dropped:
                return
        if offset:
            del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        self.owner._connection_lost(self, exc)
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # used by the owner

    def write(self, header: bytes, payload: bytes) -> None:
        if not self.writable:
            return
        assert self.transport is not None
        if len(payload) < _COALESCE_LIMIT:
            self.transport.write(header + payload)
        else:
            self.transport.writelines((header, payload))
        self.last_active = self.loop.time()

    async def drain(self) -> None:
        if self._write_paused and self.writable:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def set_reading(self, enabled: bool) -> None:
        if self.transport is None or enabled != self._read_paused:
            return
        if enabled:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()
        self._read_paused = not enabled


class TcpTransport(FramedTransport):
    """Multiplexed request/response over TCP.

    ``max_incoming`` caps incoming connections (more are refused, with a log line);
    ``max_outgoing`` caps the pool of outgoing ones (the least recently used idle one is closed
    to make room, and when all are busy a new one waits for a slot, up to ``connect_timeout``).
    ``max_concurrent_requests`` caps requests served at once per connection: beyond it the
    connection stops being read until some finish (backpressure, not errors). Connections
    idle for ``idle_timeout`` seconds are closed (incoming ones after twice that, so the
    client side closes first).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_incoming: int = 1024,
        max_outgoing: int = 256,
        max_concurrent_requests: int = 256,
        connect_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        backlog: int = 1024,
    ) -> None:
        super().__init__(max_frame_size=max_frame_size)
        if min(max_incoming, max_outgoing, max_concurrent_requests) < 1:
            raise ValueError("max_incoming, max_outgoing and max_concurrent_requests must be at least 1")
        self.host = host
        self.port = port
        self.max_incoming = max_incoming
        self.max_outgoing = max_outgoing
        self.max_concurrent_requests = max_concurrent_requests
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.backlog = backlog
        self._endpoint: Endpoint | None = None
        self._server: asyncio.Server | None = None
        self._outgoing: dict[Endpoint, _Connection] = {}
        self._connecting: dict[Endpoint, asyncio.Task[_Connection]] = {}
        self._incoming: dict[_Connection, None] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._slot_waiters: list[asyncio.Future[None]] = []

    @property
    def endpoint(self) -> Endpoint | None:
        return self._endpoint

    def check_endpoint(self, endpoint: Endpoint) -> None:
        parse_endpoint(endpoint)

    def same_host(self, announced: Endpoint, caller: Endpoint) -> bool:
        try:
            hosts = parse_endpoint(announced)[0], parse_endpoint(caller)[0]
        except ValueError:
            return False
        return _canonical_host(hosts[0]) == _canonical_host(hosts[1])

    @property
    def connection_count(self) -> int:
        """Open connections, incoming and outgoing."""
        return len(self._incoming) + len(self._outgoing)

    async def listen(self, handler: RequestHandler) -> Endpoint:
        if self._closing:
            raise TransportClosed("cannot listen: this transport is closed")
        if self._server is not None:
            raise RuntimeError(f"already listening on {self._endpoint}")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self, None, incoming=True), self.host, self.port, backlog=self.backlog
        )
        self._handler = handler
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        self._endpoint = format_endpoint(bound_host, bound_port)
        self._ensure_sweeper()
        return self._endpoint

    # ---- FramedTransport hooks ------------------------------------------------------------

    async def _open_link(self, peer: Endpoint, deadline: float) -> Link:
        """A writable connection to ``peer``, dialling one if needed.

        A connection fresh from a dial is idle until its requester resumes, and a concurrent
        dial to another peer may evict it from a full pool meanwhile; a closed one is never
        handed out (the request would wait for its whole timeout), so that case dials again.
        """
        loop = asyncio.get_running_loop()
        host, port = parse_endpoint(peer)
        while True:
            connection = self._outgoing.get(peer)
            if connection is not None and connection.writable:
                return connection
            task = self._connecting.get(peer)
            if task is None:
                task = loop.create_task(self._connect(peer, host, port))
                self._connecting[peer] = task
                task.add_done_callback(lambda done: self._connect_finished(peer, done))
            try:
                async with asyncio.timeout_at(deadline):
                    connection = await asyncio.shield(task)
            except TimeoutError:
                raise RequestTimeout(f"connecting to {peer} took longer than the request's timeout") from None
            if connection.writable:
                return connection

    def _write(self, link: Link, kind: FrameKind, request_id: int, payload: bytes) -> None:
        assert isinstance(link, _Connection)
        link.write(encode_header(kind, request_id, len(payload)), payload)

    async def _drain(self, link: Link) -> None:
        assert isinstance(link, _Connection)
        await link.drain()

    def _sender(self, link: Link) -> Endpoint:
        assert isinstance(link, _Connection)
        return link.peer

    def _reject(self, link: Link, request_id: int, reason: str) -> None:
        assert isinstance(link, _Connection)
        self._drop(link, reason)

    def _on_inflight(self, link: Link, *, serving: bool, delta: int) -> None:
        assert isinstance(link, _Connection)
        if serving:
            link.serving += delta
            link.set_reading(link.serving < self.max_concurrent_requests)
        else:
            link.pending += delta
        if link.idle and self._slot_waiters:
            self._wake_slot_waiter()

    def _stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _close_links(self) -> None:
        for task in self._connecting.values():
            task.cancel()
        connections = [*self._incoming, *self._outgoing.values()]
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
        if connections:
            await asyncio.wait([c.lost for c in connections], timeout=1.0)
        for connection in connections:  # whatever did not finish flushing in time
            if connection.transport is not None:
                connection.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()

    # ---- connection bookkeeping -----------------------------------------------------------

    async def _connect(self, peer: Endpoint, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._make_room_for_outgoing(peer)
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, peer, incoming=False), host, port
                )
        except TimeoutError:
            raise PeerUnavailable(
                f"connecting to {peer} timed out after {self.connect_timeout:g} s "
                f"(or all {self.max_outgoing} outgoing connections stayed busy)"
            ) from None
        except OSError as error:
            raise PeerUnavailable(f"cannot connect to {peer}: {error.strerror or error}") from None
        if self._closing:
            connection.transport.close()
            raise TransportClosed("transport closed while connecting")
        self._outgoing[peer] = connection
        self._ensure_sweeper()
        return connection

    def _connect_finished(self, peer: Endpoint, task: asyncio.Task[_Connection]) -> None:
        if self._connecting.get(peer) is task:
            del self._connecting[peer]
        if not task.cancelled():
            task.exception()  # retrieved here so an abandoned failed connect is not reported twice

    async def _make_room_for_outgoing(self, peer: Endpoint) -> None:
        """Keep outgoing connections within ``max_outgoing``.

        At the limit, the least recently used idle connection is closed; when every one is
        busy, wait until one becomes idle or closes (the caller bounds the wait).
        """
        while True:
            others = len(self._outgoing) + sum(1 for p in self._connecting if p != peer)
            if others < self.max_outgoing:
                return
            idle = [c for c in self._outgoing.values() if c.idle]
            if idle:
                oldest = min(idle, key=lambda c: c.last_active)
                del self._outgoing[oldest.peer]
                if oldest.transport is not None:
                    oldest.transport.close()
                return
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)

    def _wake_slot_waiter(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def _connection_made(self, connection: _Connection) -> None:
        if not connection.incoming:
            return
        if self._closing:
            connection.dropped = True
            assert connection.transport is not None
            connection.transport.abort()
        elif len(self._incoming) >= self.max_incoming:
            self._drop(connection, f"incoming connection limit of {self.max_incoming} reached")
        else:
            self._incoming[connection] = None

    def _connection_lost(self, connection: _Connection, exc: Exception | None) -> None:
        if connection.incoming:
            self._incoming.pop(connection, None)
        elif self._outgoing.get(connection.peer) is connection:
            del self._outgoing[connection.peer]
        if connection.buffer and not connection.dropped:
            logger.warning(
                "connection %s closed mid-frame: %d bytes of an incomplete frame discarded",
                connection.peer,
                len(connection.buffer),
            )
        reason = f"connection to {connection.peer} lost"
        self._link_lost(connection, f"{reason}: {exc}" if exc else reason)
        if not connection.incoming and self._slot_waiters:
            self._wake_slot_waiter()

    def _drop(self, connection: _Connection, reason: str) -> None:
        """Close an offending connection at once, logging why; other connections carry on."""
        if connection.dropped:
            return
        connection.dropped = True
        logger.warning("closing connection %s: %s", connection.peer, reason)
        if connection.transport is not None:
            connection.transport.abort()

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None and self.idle_timeout > 0:
            self._sweeper = asyncio.get_running_loop().create_task(self._close_idle_connections())

    async def _close_idle_connections(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.idle_timeout / 4)
            now = loop.time()
            for connection in [*self._outgoing.values(), *self._incoming]:
                limit = self.idle_timeout * (2 if connection.incoming else 1)
                if connection.idle and now - connection.last_active > limit and connection.transport:
                    logger.debug("closing connection %s after %.0f s idle", connection.peer, limit)
                    connection.transport.close()
