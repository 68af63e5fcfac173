"""One TCP connection: the byte stream cut into frames, flow control, and deadlines.

This is the per-frame path of every RPC over TCP, so it is written for speed: a frame read or
written costs a few attribute reads beyond the struct packing and the copy of its payload, and
emulated delays (off unless a deployment asks) cost an ``is None`` check each way.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..delays import DelayLine
from ..endpoints import format_endpoint
from ..frames import HEADER, HEADER_SIZE, KIND_AND_ID, PREFIX, FrameKind
from ..transport import Endpoint
from . import sockets
from .config import ASYNCIO_WRITE_LIMIT
from .fairness import host_key
from .stats import DropReason

if TYPE_CHECKING:
    from .fairness import Host
    from .transport import TcpTransport

_COALESCE_LIMIT = 64 * 1024  # payloads below this are copied into one write with their header
_COPY_LIMIT = 4096  # payloads below this are sliced out of a bytearray; larger ones through a view
_READ_AHEAD = 256 * 1024  # unparsed bytes a connection may hold while it waits for its turn
# Requests a backlogged connection may have in service (they wait for the backlog to drain before
# their handler runs): enough to keep reading ahead while a large reply drains, few enough that a
# peer that never reads soon stops being read.
_SERVING_WHILE_BACKLOGGED = 4
_REQUEST = FrameKind.REQUEST.value
_PREFIX_SIZE = PREFIX.size
_MIN_LENGTH = KIND_AND_ID.size  # the shortest length a prefix may announce (an empty payload)


class _Lost:
    """A connection's loss, held in its receive delay line behind the data that came before it."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception | None) -> None:
        self.exc = exc


class Connection(asyncio.Protocol):
    """One TCP connection of a :class:`TcpTransport`, incoming or dialled.

    With emulated delays (``TcpConfig.delays``, deployments only), a connection this side
    dialled holds what it writes and what it reads in a :class:`DelayLine` each; see
    ``hivemind_core.net.delays``. Held bytes count as queued (``queued_bytes``).
    """

    def __init__(self, owner: TcpTransport, peer: Endpoint | None, *, incoming: bool) -> None:
        config = owner.config
        self.owner = owner
        self.turns = owner.turns
        self.peer = peer or "?"
        self.host = "?"  # the remote host, as limits and turns count it (``host_key``)
        self.host_state: Host | None = None  # set once the owner admits the connection
        self.incoming = incoming
        self.transport: asyncio.Transport | None = None
        # Bytes not yet cut into frames: the rest of one chunk as it was read (bytes), which is
        # sliced without copying it first, or a bytearray once later chunks add to it.
        self.buffer: bytes | bytearray = b""
        self.loop = asyncio.get_running_loop()
        self.last_active = self.loop.time()  # when it was last busy (see ``TcpTransport._on_inflight``)
        self.pending = 0
        self.serving = 0
        self.dropped = False
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.waiting_turn = False  # complete frames wait for this connection's next turn
        self.blocked = False  # a request waits for a serving slot or for the backlog to drain
        self.write_paused = False
        self.max_frame_size = config.max_frame_size
        self._max_serving = config.max_concurrent_requests
        self.serve_limit = self._max_serving  # fewer while writing is paused (``can_serve``)
        self._read_paused = False
        self._write_limit = ASYNCIO_WRITE_LIMIT  # what asyncio starts a transport with
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._frame_started: float | None = None  # when the incomplete frame in the buffer began
        self._stalled_since: float | None = None  # backlogged since (or since the last check)
        self._stall_mark = 0  # backlog then
        self._send_line: DelayLine[tuple[bytes, bytes]] | None = None
        self._receive_line: DelayLine[bytes | _Lost] | None = None
        self._delayed_bytes = 0  # written, but held in the send line
        if not incoming and peer is not None and config.delays is not None:
            delay = config.delays.to(peer)
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
        return self.serving < self.serve_limit

    @property
    def queued_bytes(self) -> int:
        held = self._delayed_bytes
        return held + self.transport.get_write_buffer_size() if self.transport is not None else held

    # ---- asyncio.Protocol callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner._sockets[self] = None
        sockets.limit_unsent(transport)
        peername = transport.get_extra_info("peername")
        if peername:
            self.host = host_key(peername[0])
            if self.incoming:
                self.peer = format_endpoint(peername[0], peername[1])
        self.set_write_limit(self.owner.backlog.limit())
        self.owner._connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self._receive_line is not None:  # emulated delay: read it when it would have arrived
            self._receive_line.push(data)
            return
        if self.dropped:
            return
        buffer = self.buffer
        if not buffer:
            self.buffer = data
        elif type(buffer) is bytes:
            self.buffer = bytearray(buffer)
            self.buffer += data
        else:
            buffer += data
        if self.waiting_turn or self.blocked:
            self.update_reading()
        else:
            self.turns.hand_over(self)

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
        self.serve_limit = min(self._max_serving, _SERVING_WHILE_BACKLOGGED)
        assert self.transport is not None
        self._stall_mark = self.transport.get_write_buffer_size()
        self._stalled_since = self.loop.time()
        self.owner.backlog.grew(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.serve_limit = self._max_serving
        self._stalled_since = None
        self._wake_drain_waiters()
        self.owner.backlog.drained(self)
        self.unblock()

    # ---- reading: frames out of the buffer --------------------------------------------------

    def dispatch(self, budget: int) -> int:
        """Hand complete frames, up to ``budget`` requests, to the owner; returns how many requests.

        Stops early at a request it may not serve yet (too many in service, or replies not
        read), leaving it and what follows in the buffer until ``unblock``; asks for another
        turn when frames are left over. A length prefix is checked as soon as its 4 bytes are
        in, so an oversized frame is refused before its body is buffered.
        """
        if self.dropped or self.transport is None:
            return 0
        buffer = self.buffer
        in_place = type(buffer) is bytes
        limit = self.max_frame_size
        deliver = self.owner._frame_received
        offset, end = 0, len(buffer)
        handed = 0
        more = blocked = False
        while end - offset >= HEADER_SIZE:
            length, kind, request_id = HEADER.unpack_from(buffer, offset)
            if length + _PREFIX_SIZE > limit or length < _MIN_LENGTH:
                self._refuse_length(length)
                return handed
            stop = offset + _PREFIX_SIZE + length
            if stop > end:
                break
            if kind == _REQUEST:  # only requests make work for us; answers are cheap
                if self.serving >= self.serve_limit:
                    blocked = True
                    break
                if handed == budget:
                    more = True
                    break
                handed += 1
            if in_place:
                payload = buffer[offset + HEADER_SIZE : stop]
            elif length < _COPY_LIMIT:
                payload = bytes(buffer[offset + HEADER_SIZE : stop])
            else:  # one copy, not two
                with memoryview(buffer) as view:
                    payload = bytes(view[offset + HEADER_SIZE : stop])
            offset = stop
            deliver(self, kind, request_id, payload)
            if self.dropped:
                return handed
        else:
            if end - offset >= _PREFIX_SIZE:
                (length,) = PREFIX.unpack_from(buffer, offset)
                if length + _PREFIX_SIZE > limit or length < _MIN_LENGTH:
                    self._refuse_length(length)
                    return handed
        if offset:
            if offset == end:
                self.buffer = buffer = b""
            elif in_place:
                self.buffer = buffer = buffer[offset:]
            else:
                del buffer[:offset]
        self.blocked = blocked
        if more:
            self.turns.want_turn(self)
        if buffer and not (more or blocked):  # an incomplete frame is arriving: time it
            if offset or self._frame_started is None:
                self._frame_started = self.loop.time()
        elif self._frame_started is not None:
            self._frame_started = None
        if blocked or self._read_paused or self.waiting_turn:
            self.update_reading()
        return handed

    def _refuse_length(self, length: int) -> None:
        """Drop the connection for a frame whose length prefix is over the limit or too short."""
        if length + _PREFIX_SIZE > self.max_frame_size:
            size, limit = length + _PREFIX_SIZE, self.max_frame_size
            self.owner._drop(self, f"frame of {size} bytes exceeds the {limit}-byte limit")
        else:
            self.owner._drop(self, f"frame length {length} is shorter than the frame header")

    def unblock(self) -> None:
        """Called when a serving slot frees up or the backlog drains: take a turn again."""
        if self.blocked and self.serving < self.serve_limit:
            self.blocked = False
            self.turns.want_turn(self)

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

    # ---- writing --------------------------------------------------------------------------

    def send(self, kind: int, request_id: int, payload: bytes) -> None:
        """Queue one frame; nothing happens if the connection is closing or gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        header = HEADER.pack(len(payload) + _MIN_LENGTH, kind, request_id)
        if self._send_line is not None:  # emulated delay: write it when it would have left
            self._send_line.push((header, payload))
            self._delayed_bytes += len(header) + len(payload)
        elif len(payload) < _COALESCE_LIMIT:
            transport.write(header + payload)
        else:
            self._write_now(transport, header, payload)

    @staticmethod
    def _write_now(transport: asyncio.Transport, header: bytes, payload: bytes) -> None:
        if len(payload) < _COALESCE_LIMIT:
            transport.write(header + payload)
        else:
            transport.writelines((header, payload))

    def _send_late(self, frame: tuple[bytes, bytes]) -> None:
        """A frame out of the send delay line: written now (dropped if the connection closed)."""
        header, payload = frame
        self._delayed_bytes -= len(header) + len(payload)
        if self.transport is not None and not self.transport.is_closing():
            self._write_now(self.transport, header, payload)

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

    def _wake_drain_waiters(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # ---- deadlines ------------------------------------------------------------------------

    def start_frame_clock(self) -> None:
        """A new connection has a frame's time to send one."""
        self._frame_started = self.loop.time()

    def check_deadlines(self, now: float) -> None:
        """Drop the connection if a frame arrives, or its backlog drains, slower than allowed."""
        owner = self.owner
        timeout, rate = owner.config.transfer_timeout, owner.config.min_transfer_rate
        if self._frame_started is not None:
            elapsed = now - self._frame_started
            if elapsed > timeout + len(self.buffer) / rate:
                sent = f"sent {len(self.buffer)} bytes of a frame" if self.buffer else "sent nothing"
                owner._drop(
                    self,
                    f"{sent} in {elapsed:.1f} s (a frame must arrive within {timeout:g} s "
                    f"plus its size at {rate:g} bytes/s)",
                    DropReason.SLOW_FRAME,
                )
                return
        if self._stalled_since is not None and self.transport is not None:
            elapsed = now - self._stalled_since
            if elapsed < timeout:
                return
            queued = self.transport.get_write_buffer_size()
            read = self._stall_mark - queued
            if read < min(self._stall_mark, rate * elapsed):
                owner._drop(
                    self,
                    f"read {max(read, 0)} of {self._stall_mark} queued bytes in {elapsed:.1f} s "
                    f"(less than {rate:g} bytes/s)",
                    DropReason.STALLED_READER,
                )
                return
            self._stalled_since, self._stall_mark = now, queued
