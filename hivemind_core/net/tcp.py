"""TcpTransport: frames over real TCP sockets with asyncio.

One persistent connection per remote endpoint carries any number of concurrent requests
(multiplexed by request id). Incoming connections are capped, in total and per remote host;
outgoing ones are pooled, and idle ones are closed so a peer that talks to thousands of others
keeps few sockets open. A peer that sends garbage loses only its own connection, with the
reason in the log.

What one remote peer can cost is bounded: a frame must arrive at a minimum rate (so a
connection trickling bytes, or sending nothing, gives its slot back), replies queue only up to
a backlog per connection and in total (a peer that does not read its replies stops being
served, and is dropped if it still does not read), and connections take turns, host by host,
at handing frames to the handler (so one greedy peer cannot take the event loop from others).

This module and the real compute executor are the only places in ``hivemind_core`` allowed
to touch sockets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import ipaddress
import logging
import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from .delays import DelayLine, EmulatedDelays
from .endpoints import canonical_host, check_remote_endpoint, format_endpoint, parse_endpoint
from .errors import PeerUnavailable, RequestTimeout, TransportClosed
from .frames import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, KIND_AND_ID, PREFIX, FrameKind, encode_header
from .multiplex import FramedTransport, Link
from .transport import Endpoint, RequestHandler

logger = logging.getLogger(__name__)

_COALESCE_LIMIT = 64 * 1024  # payloads below this are copied into one write with their header
_REQUESTS_PER_TURN = 16  # requests one connection hands over before another gets a turn
_REQUESTS_PER_ROUND = 64  # requests one host hands over per round, over all its connections
_READ_AHEAD = 256 * 1024  # unparsed bytes a connection may hold while it waits for its turn
_ASYNCIO_WRITE_LIMIT = 64 * 1024  # asyncio's default high-water mark for a transport's buffer
_PRESSURE_BACKLOG = 16 * 1024  # per-connection backlog while the total is over its budget
# Requests a backlogged connection may have in service (they wait for the backlog to drain before
# their handler runs): enough to keep reading ahead while a large reply drains, few enough that a
# peer that never reads soon stops being read.
_SERVING_WHILE_BACKLOGGED = 4
_REFUSAL_LOG_INTERVAL = 10.0  # seconds between log lines about connections refused over a limit
# Unsent bytes the kernel may hold for a connection. Without a cap, Linux grows a socket's send
# buffer up to tcp_wmem's maximum (4 MiB): a peer that never reads got ~190,000 small replies
# computed for it, over 20 s of the loop, before its backlog even began to count. Bytes in flight
# are not capped, so throughput does not suffer.
_KERNEL_UNSENT_LIMIT = 64 * 1024


class DropReason(enum.StrEnum):
    """Why this side closed a connection on its own initiative."""

    PROTOCOL = "protocol"
    """A malformed or oversized frame, or a body the handler refused (``ProtocolError``)."""
    INCOMING_LIMIT = "incoming_limit"
    """``max_incoming`` connections were already open."""
    HOST_LIMIT = "host_limit"
    """``max_incoming_per_host`` connections from the same host were already open."""
    SLOW_FRAME = "slow_frame"
    """A frame (or a new connection's first one) did not arrive at the minimum rate."""
    STALLED_READER = "stalled_reader"
    """The peer did not read what was queued for it at the minimum rate."""


@dataclass(frozen=True)
class TcpStats:
    """A snapshot of what a :class:`TcpTransport` holds and has refused."""

    incoming: int
    """Open incoming connections."""
    outgoing: int
    """Open outgoing connections."""
    queued_bytes: int
    """Bytes written to connections that the kernel has not taken yet, all connections together."""
    peak_queued_bytes: int
    """The most ``queued_bytes`` seen (at every connection backlog and every snapshot)."""
    dropped: Mapping[DropReason, int]
    """Connections closed by this side, by reason."""


def resolve_endpoint(endpoint: Endpoint) -> Endpoint:
    """An operator's ``name:port`` as the canonical endpoint of its first address (blocking).

    Peers accept only IP addresses from one another (``check_remote_endpoint``), so a name
    typed on a command line is looked up once, where it is typed.
    """
    host, port = parse_endpoint(endpoint)
    if _ip(host) is not None:
        return endpoint
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ValueError(f"cannot resolve {host!r}: {error.strerror or error}") from None
    return format_endpoint(str(infos[0][4][0]), port)


@functools.lru_cache(maxsize=4096)
def _host_key(host: str) -> str:
    """Whom a connection counts against: its address, or its /64 for IPv6 (one site's block)."""
    host = canonical_host(host)
    address = _ip(host)
    if isinstance(address, ipaddress.IPv6Address) and not address.is_loopback:
        return f"{ipaddress.IPv6Network((address, 64), strict=False).network_address}/64"
    return host


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _source_address(local_host: str, remote_host: str) -> str | None:
    """The address to dial ``remote_host`` from, for a peer listening on ``local_host``.

    ``local_host`` itself when it is one specific address of the same family and scope
    (loopback or not) as the remote one; otherwise ``None``: the operating system picks.
    """
    local, remote = _ip(local_host), _ip(remote_host)
    if local is None or remote is None or local.is_unspecified or local.version != remote.version:
        return None
    return local_host if local.is_loopback == remote.is_loopback else None


class _Lost:
    """A connection's loss, held in its receive delay line behind the data that came before it."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception | None) -> None:
        self.exc = exc


class _Connection(asyncio.Protocol):
    """One TCP connection: splits the byte stream into frames and handles flow control.

    With emulated delays (``TcpTransport(delays=...)``, deployments only), a connection this
    side dialled holds what it writes and what it reads in a :class:`DelayLine` each; see
    ``hivemind_core.net.delays``. Held bytes count as queued (``queued_bytes``).
    """

    def __init__(self, owner: TcpTransport, peer: Endpoint | None, *, incoming: bool) -> None:
        self.owner = owner
        self.peer = peer or "?"
        self.host = "?"  # the remote host, as limits and turns count it (``_host_key``)
        self.host_state: _Host | None = None  # set once the owner admits the connection
        self.incoming = incoming
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.loop = asyncio.get_running_loop()
        self.last_active = self.loop.time()
        self.pending = 0
        self.serving = 0
        self.dropped = False
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.waiting_turn = False  # complete frames wait for this connection's next turn
        self.blocked = False  # a request waits for a serving slot or for the backlog to drain
        self.write_paused = False
        self._read_paused = False
        self._write_limit = _ASYNCIO_WRITE_LIMIT  # what asyncio starts a transport with
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._frame_started: float | None = None  # when the incomplete frame in the buffer began
        self._stalled_since: float | None = None  # backlogged since (or since the last check)
        self._stall_mark = 0  # backlog then
        self._send_line: DelayLine[tuple[bytes, bytes]] | None = None
        self._receive_line: DelayLine[bytes | _Lost] | None = None
        self._delayed_bytes = 0  # written, but held in the send line
        if not incoming and peer is not None and owner.delays is not None:
            delay = owner.delays.to(peer)
            if delay.there > 0:
                self._send_line = DelayLine(delay.there, self._send_late)
            if delay.back > 0:
                self._receive_line = DelayLine(delay.back, self._receive_late)
        if incoming:  # accepted: its socket is open already, before connection_made
            owner._sockets[self] = None

    @property
    def writable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    @property
    def idle(self) -> bool:
        return self.pending == 0 and self.serving == 0

    @property
    def can_serve(self) -> bool:
        """Whether another request may start; few while replies wait for the peer to read them."""
        limit = self.owner.max_concurrent_requests
        if self.write_paused:
            limit = min(limit, _SERVING_WHILE_BACKLOGGED)
        return self.serving < limit

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner._sockets[self] = None
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_NOTSENT_LOWAT"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, _KERNEL_UNSENT_LIMIT)
        peername = transport.get_extra_info("peername")
        if peername:
            self.host = _host_key(peername[0])
            if self.incoming:
                self.peer = format_endpoint(peername[0], peername[1])
        self.set_write_limit(self.owner._backlog_limit())
        self.owner._connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self._receive_line is not None:  # emulated delay: read it when it would have arrived
            self._receive_line.push(data)
            return
        if self.dropped:
            return
        self.last_active = self.loop.time()
        self.buffer += data
        if self.waiting_turn or self.blocked:
            self.update_reading()
        else:
            self.owner._hand_over(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._receive_line is not None and len(self._receive_line):
            self._receive_line.push(_Lost(exc))  # the close arrives after the data sent before it
            return
        if self._send_line is not None:
            self._send_line.close()
            self._delayed_bytes = 0
        self.transport = None
        self.owner._sockets.pop(self, None)
        self._frame_started = self._stalled_since = None
        self._wake_drain_waiters()
        self.owner._connection_lost(self, exc)
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        assert self.transport is not None
        self._stall_mark = self.transport.get_write_buffer_size()
        self._stalled_since = self.loop.time()
        self.owner._backlog_grew(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._stalled_since = None
        self._wake_drain_waiters()
        self.owner._backlog_drained(self)
        self.unblock()

    # used by the owner

    def dispatch(self, budget: int) -> int:
        """Hand complete frames, up to ``budget`` requests, to the owner; returns how many requests.

        Stops early at a request it may not serve yet (too many in service, or replies not
        read), leaving it and what follows in the buffer until ``unblock``; asks for another
        turn when frames are left over.
        """
        if self.dropped or self.transport is None:
            return 0
        owner = self.owner
        buffer = self.buffer
        limit = owner.max_frame_size
        offset, end = 0, len(buffer)
        handed = 0
        more = blocked = False
        while end - offset >= PREFIX.size:
            (length,) = PREFIX.unpack_from(buffer, offset)
            if length + PREFIX.size > limit:
                size = length + PREFIX.size
                owner._drop(self, f"frame of {size} bytes exceeds the {limit}-byte limit")
                return handed
            if length < KIND_AND_ID.size:
                owner._drop(self, f"frame length {length} is shorter than the frame header")
                return handed
            if end - offset - PREFIX.size < length:
                break
            kind, request_id = KIND_AND_ID.unpack_from(buffer, offset + PREFIX.size)
            if kind == FrameKind.REQUEST:  # only requests make work for us; answers are cheap
                if not self.can_serve:
                    blocked = True
                    break
                if handed == budget:
                    more = True
                    break
                handed += 1
            with memoryview(buffer) as view:
                payload = bytes(view[offset + HEADER_SIZE : offset + PREFIX.size + length])
            offset += PREFIX.size + length
            owner._frame_received(self, kind, request_id, payload)
            if self.dropped:
                return handed
        if offset:
            del buffer[:offset]
        self.blocked = blocked
        if more:
            owner._want_turn(self)
        if buffer and not (more or blocked):  # an incomplete frame is arriving: time it
            if offset or self._frame_started is None:
                self._frame_started = self.loop.time()
        else:
            self._frame_started = None
        self.update_reading()
        return handed

    def unblock(self) -> None:
        """Called when a serving slot frees up or the backlog drains: take a turn again."""
        if self.blocked and self.can_serve:
            self.blocked = False
            self.owner._want_turn(self)

    def write(self, header: bytes, payload: bytes) -> None:
        if not self.writable:
            return
        assert self.transport is not None
        if self._send_line is not None:  # emulated delay: write it when it would have left
            self._send_line.push((header, payload))
            self._delayed_bytes += len(header) + len(payload)
        else:
            self._write_now(header, payload)
        self.last_active = self.loop.time()

    def _write_now(self, header: bytes, payload: bytes) -> None:
        assert self.transport is not None
        if len(payload) < _COALESCE_LIMIT:
            self.transport.write(header + payload)
        else:
            self.transport.writelines((header, payload))

    def _send_late(self, frame: tuple[bytes, bytes]) -> None:
        """A frame out of the send delay line: written now (dropped if the connection closed)."""
        header, payload = frame
        self._delayed_bytes -= len(header) + len(payload)
        if self.writable:
            self._write_now(header, payload)

    def _receive_late(self, item: bytes | _Lost) -> None:
        """Bytes (or the loss of the connection) out of the receive delay line: taken now."""
        line, self._receive_line = self._receive_line, None
        try:
            if isinstance(item, _Lost):
                self.connection_lost(item.exc)
            else:
                self.data_received(item)
        finally:
            if self.transport is not None:
                self._receive_line = line

    async def drain(self, until: asyncio.Future[bytes] | None = None) -> None:
        """Wait while the backlog is over its limit (or until the connection or ``until`` ends)."""
        while self.write_paused and self.writable and not (until is not None and until.done()):
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)

            def wake(_: object, waiter: asyncio.Future[None] = waiter) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            if until is not None:
                until.add_done_callback(wake)
            try:
                await waiter
            finally:
                if until is not None:
                    until.remove_done_callback(wake)
                if waiter in self._drain_waiters:
                    self._drain_waiters.remove(waiter)

    def set_write_limit(self, high: int) -> None:
        """Pause writing (``pause_writing``) above ``high`` bytes queued, resume at a quarter."""
        if self.transport is not None and high != self._write_limit:
            self.transport.set_write_buffer_limits(high=high)
            self._write_limit = high

    @property
    def queued_bytes(self) -> int:
        held = self._delayed_bytes
        return held + self.transport.get_write_buffer_size() if self.transport is not None else held

    # internals

    def _wake_drain_waiters(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    def update_reading(self) -> None:
        """Read unless a request is blocked or too much waits for a turn (bounds the buffer)."""
        enabled = not self.blocked and not (self.waiting_turn and len(self.buffer) > _READ_AHEAD)
        if self.transport is None or enabled != self._read_paused:
            return
        if enabled:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()
        self._read_paused = not enabled

    def start_frame_clock(self) -> None:
        """A new connection has a frame's time to send one."""
        self._frame_started = self.loop.time()

    def check_deadlines(self, now: float) -> None:
        """Drop the connection if a frame arrives, or its backlog drains, slower than allowed."""
        owner = self.owner
        if self._frame_started is not None:
            elapsed = now - self._frame_started
            if elapsed > owner.transfer_timeout + len(self.buffer) / owner.min_transfer_rate:
                sent = f"sent {len(self.buffer)} bytes of a frame" if self.buffer else "sent nothing"
                owner._drop(
                    self,
                    f"{sent} in {elapsed:.1f} s (a frame must arrive within {owner.transfer_timeout:g} s "
                    f"plus its size at {owner.min_transfer_rate:g} bytes/s)",
                    DropReason.SLOW_FRAME,
                )
                return
        if self._stalled_since is not None and self.transport is not None:
            elapsed = now - self._stalled_since
            if elapsed < owner.transfer_timeout:
                return
            queued = self.transport.get_write_buffer_size()
            read = self._stall_mark - queued
            if read < min(self._stall_mark, owner.min_transfer_rate * elapsed):
                owner._drop(
                    self,
                    f"read {max(read, 0)} of {self._stall_mark} queued bytes in {elapsed:.1f} s "
                    f"(less than {owner.min_transfer_rate:g} bytes/s)",
                    DropReason.STALLED_READER,
                )
                return
            self._stalled_since, self._stall_mark = now, queued


class _Host:
    """The connections to and from one remote host: how many, and which wait for a turn."""

    __slots__ = ("connections", "credit", "in_turns", "incoming", "name", "ready", "round")

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self.incoming = 0
        self.ready: collections.deque[_Connection] = collections.deque()
        self.in_turns = False  # in the transport's queue of hosts waiting for a turn
        self.round = -1  # the round ``credit`` belongs to
        self.credit = 0  # frames it may still hand over in that round


class TcpTransport(FramedTransport):
    """Multiplexed request/response over TCP.

    Connections: ``max_incoming`` caps incoming connections and ``max_incoming_per_host``
    those from one remote host (``None``: no per-host cap); more are refused, with a log line.
    ``max_outgoing`` caps the pool of outgoing ones (the least recently used idle one is closed
    to make room, and when all are busy a new one waits for a slot, up to ``connect_timeout``).
    Connections idle for ``idle_timeout`` seconds are closed (incoming ones after twice that,
    so the client side closes first). A transport listening on a specific address dials from
    that address too, so its peers see requests come from the host it announces.

    Announced address: ``endpoint`` is what peers are told to dial. By default it is the bound
    address; ``announce_host`` and ``announce_port`` replace it where peers reach this one
    elsewhere (a public address, a port forwarded through NAT, one interface's address when
    listening on all of them). Listening on every interface (``0.0.0.0``, ``::``) without an
    ``announce_host`` is refused: no peer can dial the unspecified address.

    Slow or greedy peers: a frame must arrive within ``transfer_timeout`` seconds plus its
    size at ``min_transfer_rate`` bytes/s, and a new connection must send its first one in that
    time (so trickling or silent connections give their slot back). A connection whose replies
    queue beyond ``max_connection_backlog`` bytes is served no more until it reads (at most 4
    requests wait for it), and is closed if it then reads less than ``min_transfer_rate`` over
    a ``transfer_timeout``. When the backlog of all connections together exceeds
    ``max_total_backlog``, every connection's limit drops to 16 KiB until the total halves, so
    the connections with the biggest backlogs wait and the peers that read keep being served.
    ``max_concurrent_requests`` caps requests served at once per connection (backpressure,
    not errors), and connections take turns, host by host, at handing requests over.

    ``delays`` (deployments only, never by default): one-way delays per destination, which
    connections this side dials add in user space both ways, for kernels without ``netem``
    (see ``hivemind_core.net.delays``). ``None`` leaves every path as it is.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_incoming: int = 1024,
        max_incoming_per_host: int | None = 64,
        max_outgoing: int = 256,
        max_concurrent_requests: int = 256,
        max_connection_backlog: int = _ASYNCIO_WRITE_LIMIT,
        max_total_backlog: int = 128 * 1024 * 1024,
        transfer_timeout: float = 10.0,
        min_transfer_rate: float = 32 * 1024,
        connect_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        backlog: int = 1024,
        announce_host: str | None = None,
        announce_port: int | None = None,
        delays: EmulatedDelays | None = None,
    ) -> None:
        super().__init__(max_frame_size=max_frame_size)
        if announce_host is not None:
            check_remote_endpoint(format_endpoint(announce_host, announce_port or 1))
        if announce_port is not None and not 0 < announce_port < 65536:
            raise ValueError(f"announce_port must be 1..65535, got {announce_port}")
        if min(max_incoming, max_outgoing, max_concurrent_requests) < 1:
            raise ValueError("max_incoming, max_outgoing and max_concurrent_requests must be at least 1")
        if max_incoming_per_host is not None and max_incoming_per_host < 1:
            raise ValueError(f"max_incoming_per_host must be at least 1 or None, got {max_incoming_per_host}")
        if not 0 < max_connection_backlog <= max_total_backlog:
            raise ValueError(
                f"need 0 < max_connection_backlog ({max_connection_backlog}) <= max_total_backlog "
                f"({max_total_backlog})"
            )
        if not (transfer_timeout > 0 and min_transfer_rate > 0):
            raise ValueError(
                f"transfer_timeout ({transfer_timeout!r}) and min_transfer_rate ({min_transfer_rate!r}) "
                f"must be positive"
            )
        self.host = host
        self.port = port
        self.max_incoming = max_incoming
        self.max_incoming_per_host = max_incoming_per_host
        self.max_outgoing = max_outgoing
        self.max_concurrent_requests = max_concurrent_requests
        self.max_connection_backlog = max_connection_backlog
        self.max_total_backlog = max_total_backlog
        self.transfer_timeout = transfer_timeout
        self.min_transfer_rate = min_transfer_rate
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.backlog = backlog
        self.announce_host = announce_host
        self.announce_port = announce_port
        self.delays = delays
        self._endpoint: Endpoint | None = None
        self._bound: Endpoint | None = None
        self._server: asyncio.Server | None = None
        self._outgoing: dict[Endpoint, _Connection] = {}
        self._connecting: dict[Endpoint, asyncio.Task[_Connection]] = {}
        self._incoming: dict[_Connection, None] = {}
        self._sockets: dict[_Connection, None] = {}  # every connection whose socket may be open
        self._sweeper: asyncio.Task[None] | None = None
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._dial_waiters: collections.Counter[Endpoint] = collections.Counter()  # requests awaiting a dial
        self._dialing: set[Endpoint] = set()  # dials that hold a slot of the pool (past the wait for one)
        self._hosts: dict[str, _Host] = {}
        self._turns: collections.deque[_Host] = collections.deque()
        self._round = 0
        self._round_scheduled = False
        self._backlogged_connections: dict[_Connection, None] = {}
        self._under_pressure = False
        self._peak_queued = 0
        self._dropped: collections.Counter[DropReason] = collections.Counter()
        self._next_refusal_log = -math.inf
        self._refused_unlogged = 0

    @property
    def endpoint(self) -> Endpoint | None:
        """The endpoint peers are told to dial (see the class docstring); None until listening."""
        return self._endpoint

    @property
    def bound_endpoint(self) -> Endpoint | None:
        """The address and port the listening socket is bound to; None until listening."""
        return self._bound

    def check_endpoint(self, endpoint: Endpoint) -> None:
        check_remote_endpoint(endpoint)

    def same_host(self, announced: Endpoint, caller: Endpoint) -> bool:
        try:
            hosts = parse_endpoint(announced)[0], parse_endpoint(caller)[0]
        except ValueError:
            return False
        return canonical_host(hosts[0]) == canonical_host(hosts[1])

    @property
    def connection_count(self) -> int:
        """Open connections, incoming and outgoing."""
        return len(self._incoming) + len(self._outgoing)

    @property
    def stats(self) -> TcpStats:
        queued = sum(c.queued_bytes for c in [*self._incoming, *self._outgoing.values()])
        self._peak_queued = max(self._peak_queued, queued)
        return TcpStats(
            incoming=len(self._incoming),
            outgoing=len(self._outgoing),
            queued_bytes=queued,
            peak_queued_bytes=self._peak_queued,
            dropped=dict(self._dropped),
        )

    async def listen(self, handler: RequestHandler) -> Endpoint:
        if self._closing:
            raise TransportClosed("cannot listen: this transport is closed")
        if self._server is not None:
            raise RuntimeError(f"already listening on {self._endpoint}")
        if self.announce_host is None and self.host in ("0.0.0.0", "::", ""):
            raise ValueError(
                f"listening on every interface (host {self.host!r}) needs an announce_host: "
                "the address peers dial to reach this one"
            )
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self, None, incoming=True), self.host, self.port, backlog=self.backlog
        )
        if self._closing:  # closed while the socket was being bound
            server.close()
            raise TransportClosed("cannot listen: this transport was closed meanwhile")
        self._server = server
        self._handler = handler
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        self._bound = format_endpoint(bound_host, bound_port)
        self._endpoint = format_endpoint(self.announce_host or bound_host, self.announce_port or bound_port)
        self._ensure_sweeper()
        return self._endpoint

    # ---- FramedTransport hooks ------------------------------------------------------------

    async def _open_link(self, peer: Endpoint, deadline: float) -> Link:
        """A writable connection to ``peer``, dialling one if needed.

        A connection fresh from a dial is idle until its requesters resume, so a full pool
        does not evict a connection that requesters still wait for (evicting them made
        concurrent dials to more peers than the pool holds evict each other's new connections
        over and over: 50,000 dials for 10 readers' lookups). A dial that every requester gave
        up on is cancelled. A closed connection is never handed out (the request would wait
        for its whole timeout), so that case dials again.
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
            self._dial_waiters[peer] += 1
            try:
                async with asyncio.timeout_at(deadline):
                    connection = await asyncio.shield(task)
            except TimeoutError:
                raise RequestTimeout(f"connecting to {peer} took longer than the request's timeout") from None
            finally:
                self._dial_waiters[peer] -= 1
                if not self._dial_waiters[peer]:
                    del self._dial_waiters[peer]
                    if not task.done():  # nobody waits for this connection any more
                        task.cancel()
                        if self._connecting.get(peer) is task:
                            del self._connecting[peer]  # a later request dials afresh
            if connection.writable:
                return connection

    def _write(self, link: Link, kind: FrameKind, request_id: int, payload: bytes) -> None:
        assert isinstance(link, _Connection)
        link.write(encode_header(kind, request_id, len(payload)), payload)

    def _backlogged(self, link: Link) -> bool:
        assert isinstance(link, _Connection)
        return link.write_paused and link.writable

    async def _drained(self, link: Link, until: asyncio.Future[bytes] | None = None) -> None:
        assert isinstance(link, _Connection)
        await link.drain(until)

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
            if delta < 0:
                link.unblock()
        else:
            link.pending += delta
        if link.idle and self._slot_waiters:
            self._wake_slot_waiter()

    def _stop_accepting(self) -> None:
        """Stop taking connections; close the server once those accepted already are set up.

        The loop sets up each connection it accepts in a task of its own, which fails (leaking
        the accepted socket) if the server is closed first. Those tasks are queued already, so
        the server closes just after them; ``_connection_made`` aborts what they set up.
        """
        if self._server is not None:
            loop = asyncio.get_running_loop()
            for sock in self._server.sockets:
                loop.remove_reader(sock.fileno())
            loop.call_soon(self._server.close)

    async def _close_links(self) -> None:
        """Close every socket: dials in progress, and connections accepted but not yet set up
        (one pass of the loop lets the tasks setting those up reach ``_sockets``)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        dials = list(self._connecting.values())
        for task in dials:
            task.cancel()
        try:
            await asyncio.sleep(0)
            if dials:
                await asyncio.wait(dials, timeout=self.connect_timeout)
            for connection in self._sockets:
                if connection.transport is not None:
                    connection.transport.close()
            if self._sockets:
                await asyncio.wait([c.lost for c in self._sockets], timeout=1.0)
        finally:
            if self._server is not None:
                self._server.close()
            for connection in list(self._sockets):  # whatever did not finish flushing in time
                if connection.transport is not None:
                    connection.transport.abort()

    # ---- turns: hosts hand frames over in rounds ------------------------------------------
    #
    # In each round a host may hand over _REQUESTS_PER_ROUND requests over all its connections,
    # each connection _REQUESTS_PER_TURN at a time: new data is dispatched at once while its host
    # has credit left, and otherwise queues behind the other hosts. A round ends at the next
    # pass of the event loop once a host has used up its credit or waits for a turn. So a host
    # with many connections or a deep pipeline gets as much of the loop per round as one that
    # sends a single request, and that one waits at most a round for its turn.

    def _hand_over(self, connection: _Connection) -> None:
        """New data arrived on ``connection``: dispatch it now if its host has credit left."""
        host = connection.host_state
        assert host is not None
        credit = self._credit(host)
        if host.in_turns or not credit:
            self._want_turn(connection)
            connection.update_reading()
            return
        host.credit -= connection.dispatch(min(credit, _REQUESTS_PER_TURN))
        if not host.credit:  # a new round gives every host new credit
            self._schedule_round()

    def _want_turn(self, connection: _Connection) -> None:
        host = connection.host_state
        if connection.waiting_turn or host is None:
            return
        connection.waiting_turn = True
        host.ready.append(connection)
        if not host.in_turns:
            host.in_turns = True
            self._turns.append(host)
        self._schedule_round()

    def _credit(self, host: _Host) -> int:
        if host.round != self._round:
            host.round, host.credit = self._round, _REQUESTS_PER_ROUND
        return host.credit

    def _schedule_round(self) -> None:
        if not self._round_scheduled:
            self._round_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_round)

    def _next_round(self) -> None:
        """Start a round: every waiting host hands over frames from its waiting connections."""
        self._round_scheduled = False
        self._round += 1
        for _ in range(len(self._turns)):
            host = self._turns.popleft()
            credit = self._credit(host)
            while host.ready and credit:
                connection = host.ready.popleft()
                connection.waiting_turn = False
                credit -= connection.dispatch(min(credit, _REQUESTS_PER_TURN))  # may queue it again
            host.credit = credit
            if host.ready:
                self._turns.append(host)
            else:
                host.in_turns = False
                self._forget_host(host)
        if self._turns:
            self._schedule_round()

    def _forget_host(self, host: _Host) -> None:
        if not (host.connections or host.in_turns):
            self._hosts.pop(host.name, None)

    # ---- backlog: bytes queued for peers that have not read them yet ----------------------

    def _backlog_limit(self) -> int:
        if self._under_pressure:
            return min(_PRESSURE_BACKLOG, self.max_connection_backlog)
        return self.max_connection_backlog

    def _backlog_grew(self, connection: _Connection) -> None:
        """``connection`` went over its limit: check the total against its budget."""
        self._backlogged_connections[connection] = None
        total = sum(c.queued_bytes for c in self._backlogged_connections)
        self._peak_queued = max(self._peak_queued, total)
        if total > self.max_total_backlog and not self._under_pressure:
            self._set_pressure(True)
            logger.warning(
                "%d bytes queued for %d peers that do not read: limiting every connection to %d bytes",
                total,
                len(self._backlogged_connections),
                self._backlog_limit(),
            )

    def _backlog_drained(self, connection: _Connection) -> None:
        if connection not in self._backlogged_connections:
            return
        del self._backlogged_connections[connection]
        if self._under_pressure:
            total = sum(c.queued_bytes for c in self._backlogged_connections)
            if total <= self.max_total_backlog // 2:
                self._set_pressure(False)
                logger.info(
                    "queued bytes back to %d: connections may queue %d bytes again",
                    total,
                    self._backlog_limit(),
                )

    def _set_pressure(self, on: bool) -> None:
        self._under_pressure = on
        limit = self._backlog_limit()
        for connection in [*self._incoming, *self._outgoing.values()]:
            connection.set_write_limit(limit)

    # ---- connection bookkeeping -----------------------------------------------------------

    async def _connect(self, peer: Endpoint, host: str, port: int) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._make_room_for_outgoing(peer)
                self._dialing.add(peer)
                try:
                    connection = await self._dial(peer, host, port)
                except BaseException:
                    self._wake_slot_waiter()  # the slot this dial held is free again
                    raise
                finally:
                    self._dialing.discard(peer)  # the connection, if any, holds the slot now
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

    async def _dial(self, peer: Endpoint, host: str, port: int) -> _Connection:
        """A new connection to ``peer``; with emulated delays, set up in their round trip."""
        delay = self.delays.to(peer) if self.delays is not None else None
        if not delay:
            return await self._dial_socket(peer, host, port)
        await asyncio.sleep(delay.there)  # the SYN on its way
        connection = await self._dial_socket(peer, host, port)
        try:
            await asyncio.sleep(delay.back)  # the SYN-ACK on its way back
        except BaseException:
            if connection.transport is not None:
                connection.transport.abort()
            raise
        return connection

    async def _dial_socket(self, peer: Endpoint, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        # dial from the address we listen on, so peers see requests from the host we announce
        source = _source_address(self.host, host) if self._server is not None else None
        if source is None:
            _, connection = await loop.create_connection(
                lambda: _Connection(self, peer, incoming=False), host, port
            )
            return connection
        sock = socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET, socket.SOCK_STREAM)
        try:
            # pick the port at connect time, so ports are shared across destinations (Linux)
            if hasattr(socket, "IP_BIND_ADDRESS_NO_PORT"):
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, port))
            _, connection = await loop.create_connection(
                lambda: _Connection(self, peer, incoming=False), sock=sock
            )
        except BaseException:
            sock.close()
            raise
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
            others = len(self._outgoing) + len(self._dialing) - (peer in self._dialing)
            if others < self.max_outgoing:
                return
            idle = [c for c in self._outgoing.values() if c.idle and c.peer not in self._dial_waiters]
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
        host = self._hosts.get(connection.host) or _Host(connection.host)
        if connection.incoming:
            if self._closing:
                connection.dropped = True
                assert connection.transport is not None
                connection.transport.abort()
                return
            if len(self._incoming) >= self.max_incoming:
                reason = f"incoming connection limit of {self.max_incoming} reached"
                self._refuse(connection, reason, DropReason.INCOMING_LIMIT)
                return
            if self.max_incoming_per_host is not None and host.incoming >= self.max_incoming_per_host:
                self._refuse(
                    connection,
                    f"{host.incoming} connections from {connection.host} are open already "
                    f"(max_incoming_per_host={self.max_incoming_per_host})",
                    DropReason.HOST_LIMIT,
                )
                return
            self._incoming[connection] = None
            host.incoming += 1
            connection.start_frame_clock()
        self._hosts[connection.host] = host
        host.connections += 1
        connection.host_state = host
        self._ensure_sweeper()

    def _connection_lost(self, connection: _Connection, exc: Exception | None) -> None:
        if connection.incoming:
            self._incoming.pop(connection, None)
        elif self._outgoing.get(connection.peer) is connection:
            del self._outgoing[connection.peer]
        host = connection.host_state
        if host is not None:
            connection.host_state = None
            host.connections -= 1
            host.incoming -= connection.incoming
            self._forget_host(host)
        self._backlog_drained(connection)
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

    def _drop(
        self, connection: _Connection, reason: str, why: DropReason = DropReason.PROTOCOL, *, log: bool = True
    ) -> None:
        """Close a connection at once, logging why; other connections carry on."""
        if connection.dropped:
            return
        connection.dropped = True
        self._dropped[why] += 1
        if log:
            logger.warning("closing connection %s: %s", connection.peer, reason)
        if connection.transport is not None:
            connection.transport.abort()

    def _refuse(self, connection: _Connection, reason: str, why: DropReason) -> None:
        """Close a connection over a limit; logged once per interval, so a flood does not flood the log."""
        now = asyncio.get_running_loop().time()
        if now < self._next_refusal_log:
            self._refused_unlogged += 1
            self._drop(connection, reason, why, log=False)
            return
        unlogged, self._refused_unlogged = self._refused_unlogged, 0
        self._next_refusal_log = now + _REFUSAL_LOG_INTERVAL
        more = f" ({unlogged} more refused since the last report)" if unlogged else ""
        self._drop(connection, reason + more, why)

    def _ensure_sweeper(self) -> None:
        """Start the sweeper, or start it again if it ever stopped."""
        if (self._sweeper is None or self._sweeper.done()) and not self._closing:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Every few seconds: close idle connections, drop those too slow to send or read."""
        loop = asyncio.get_running_loop()
        period = self.transfer_timeout / 2
        if self.idle_timeout > 0:
            period = min(period, self.idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for connection in [*self._outgoing.values(), *self._incoming]:
                try:
                    self._sweep_one(connection, now)
                except Exception:  # one connection's surprise must not end the limits for all
                    logger.exception("sweeping connection %s failed; dropping it", connection.peer)
                    self._drop(connection, "its deadlines could not be checked", log=False)

    def _sweep_one(self, connection: _Connection, now: float) -> None:
        if connection.dropped or connection.transport is None:
            return
        connection.check_deadlines(now)
        limit = self.idle_timeout * (2 if connection.incoming else 1)
        if (
            self.idle_timeout > 0
            and connection.idle
            and now - connection.last_active > limit
            and connection.transport is not None
        ):
            logger.debug("closing connection %s after %.0f s idle", connection.peer, limit)
            connection.transport.close()
