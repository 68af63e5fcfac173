"""TcpTransport: frames over real TCP sockets with asyncio.

One persistent connection per remote endpoint carries any number of concurrent requests
(multiplexed by request id). Incoming connections are capped, in total and per remote host;
outgoing ones are pooled (``pool``), and idle ones are closed so a peer that talks to thousands
of others keeps few sockets open. A peer that sends garbage loses only its own connection, with
the reason in the log.

What one remote peer can cost is bounded: a frame must arrive at a minimum rate (so a
connection trickling bytes, or sending nothing, gives its slot back), replies queue only up to
a backlog per connection and in total (``backlog``: a peer that does not read its replies stops
being served, and is dropped if it still does not read), and connections take turns, host by
host, at handing frames to the handler (``fairness``: one greedy peer cannot take the loop).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math

from ..endpoints import canonical_host, check_remote_endpoint, format_endpoint, parse_endpoint
from ..errors import TransportClosed
from ..multiplex import FramedTransport, Link
from ..transport import Endpoint, RequestHandler
from . import sockets
from .backlog import Backlog
from .config import TcpConfig
from .connection import Connection
from .fairness import Turns
from .pool import Pool
from .stats import DropReason, TcpStats

logger = logging.getLogger(__name__)

_REFUSAL_LOG_INTERVAL = 10.0  # seconds between log lines about connections refused over a limit


class TcpTransport(FramedTransport):
    """Multiplexed request/response over TCP, set up by a :class:`TcpConfig` (defaults if None).

    Announced address: ``endpoint`` is what peers are told to dial. By default it is the bound
    address; ``TcpConfig.announce_host`` and ``announce_port`` replace it where peers reach this
    one elsewhere. Listening on every interface (``0.0.0.0``, ``::``) without an
    ``announce_host`` is refused: no peer can dial the unspecified address. A transport
    listening on a specific address dials from that address too, so its peers see requests
    come from the host it announces.

    The limits, per connection, per host and in total, are ``TcpConfig``'s; every link this
    transport hands its ``FramedTransport`` hooks is a :class:`Connection`.
    """

    _eager_serving = True
    """A request's handler starts as its frame is handed over (in its connection's turn), and
    becomes a task only if it waits: most DHT and RPC handlers answer at once. Dialling needs
    no task of its own (``Pool.open``), so a handler's first step may call other peers."""

    def __init__(self, config: TcpConfig | None = None) -> None:
        self.config = config = config if config is not None else TcpConfig()
        super().__init__(max_frame_size=config.max_frame_size)
        self.turns = Turns()
        self.backlog = Backlog(config.max_connection_backlog, config.max_total_backlog, self._connections)
        self._pool = Pool(self)
        self._outgoing = self._pool.connections  # the pool's, by endpoint: read on every request
        self._endpoint: Endpoint | None = None
        self._bound: Endpoint | None = None
        self._server: asyncio.Server | None = None
        self._incoming: dict[Connection, None] = {}
        self._sockets: dict[Connection, None] = {}  # every connection whose socket may be open
        self._sweeper: asyncio.Task[None] | None = None
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

    @property
    def listening(self) -> bool:
        """Whether this transport serves requests (and dials from the address it listens on)."""
        return self._server is not None

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
        queued = sum(c.queued_bytes for c in self._connections())
        self.backlog.observe(queued)
        return TcpStats(
            incoming=len(self._incoming),
            outgoing=len(self._outgoing),
            queued_bytes=queued,
            peak_queued_bytes=self.backlog.peak,
            dropped=dict(self._dropped),
        )

    async def listen(self, handler: RequestHandler) -> Endpoint:
        if self._closing:
            raise TransportClosed("cannot listen: this transport is closed")
        if self._server is not None:
            raise RuntimeError(f"already listening on {self._endpoint}")
        config = self.config
        if config.announce_host is None and config.host in ("0.0.0.0", "::", ""):
            raise ValueError(
                f"listening on every interface (host {config.host!r}) needs an announce_host: "
                "the address peers dial to reach this one"
            )
        server = await sockets.listen(
            lambda: Connection(self, None, incoming=True), config.host, config.port, backlog=config.backlog
        )
        if self._closing:  # closed while the socket was being bound
            server.close()
            raise TransportClosed("cannot listen: this transport was closed meanwhile")
        self._server = server
        self._handler = handler
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        self._bound = format_endpoint(bound_host, bound_port)
        announced = config.announce_host or bound_host, config.announce_port or bound_port
        self._endpoint = format_endpoint(*announced)
        self._ensure_sweeper()
        return self._endpoint

    # ---- FramedTransport hooks: on every request, so kept to a few attribute reads --------

    def _open_link_now(self, peer: Endpoint) -> Link | None:
        """The pooled connection to ``peer`` if it is open (most requests): no coroutine."""
        connection = self._outgoing.get(peer)
        if connection is not None:
            transport = connection.transport
            if transport is not None and not transport.is_closing():
                return connection
        return None

    async def _open_link(self, peer: Endpoint, deadline: float) -> Link:
        return await self._pool.open(peer, deadline)  # the pool hands out an open one itself

    # The connection writes a frame, and waits for its backlog, itself: ``self._write(link, ...)``
    # calls ``Connection.send(link, ...)`` directly, without a call in between.
    _write = staticmethod(Connection.send)  # type: ignore[assignment]
    _drained = staticmethod(Connection.drain)  # type: ignore[assignment]

    def _backlogged(self, link: Connection) -> bool:  # type: ignore[override]
        return link.write_paused and link.writable

    def _sender(self, link: Connection) -> Endpoint:  # type: ignore[override]
        return link.peer

    def _reject(self, link: Connection, request_id: int, reason: str) -> None:  # type: ignore[override]
        self._drop(link, reason)

    def _on_inflight(self, link: Connection, *, serving: bool, delta: int) -> None:  # type: ignore[override]
        """Counts requests per connection; one that falls idle notes when, and frees a pool slot."""
        if serving:
            link.serving += delta
            if delta < 0 and link.blocked:
                link.unblock()
        else:
            link.pending += delta
        if delta < 0 and not (link.pending or link.serving):
            link.last_active = link.loop.time()
            if self._pool.slot_waiters:
                self._pool.wake_slot_waiter()

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
        dials = list(self._pool.dials.values())
        for task in dials:
            task.cancel()
        try:
            await asyncio.sleep(0)
            if dials:
                await asyncio.wait(dials, timeout=self.config.connect_timeout)
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

    # ---- connection bookkeeping -----------------------------------------------------------

    def _connections(self) -> list[Connection]:
        return [*self._incoming, *self._outgoing.values()]

    def _connection_made(self, connection: Connection) -> None:
        """Admit a new connection, or refuse an incoming one over a limit."""
        config = self.config
        if connection.incoming:
            if self._closing:
                connection.dropped = True
                assert connection.transport is not None
                connection.transport.abort()
                return
            if len(self._incoming) >= config.max_incoming:
                reason = f"incoming connection limit of {config.max_incoming} reached"
                self._refuse(connection, reason, DropReason.INCOMING_LIMIT)
                return
            from_host = self.turns.incoming_from(connection.host)
            if config.max_incoming_per_host is not None and from_host >= config.max_incoming_per_host:
                self._refuse(
                    connection,
                    f"{from_host} connections from {connection.host} are open already "
                    f"(max_incoming_per_host={config.max_incoming_per_host})",
                    DropReason.HOST_LIMIT,
                )
                return
            self._incoming[connection] = None
            connection.start_frame_clock()
        self.turns.admit(connection)
        self._ensure_sweeper()

    def _connection_lost(self, connection: Connection, exc: Exception | None) -> None:
        if connection.incoming:
            self._incoming.pop(connection, None)
        else:
            self._pool.lost(connection)
        self.turns.release(connection)
        self.backlog.drained(connection)
        if connection.buffer and not connection.dropped:
            logger.warning(
                "connection %s closed mid-frame: %d bytes of an incomplete frame discarded",
                connection.peer,
                len(connection.buffer),
            )
        reason = f"connection to {connection.peer} lost"
        self._link_lost(connection, f"{reason}: {exc}" if exc else reason)

    def _drop(
        self, connection: Connection, reason: str, why: DropReason = DropReason.PROTOCOL, *, log: bool = True
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

    def _refuse(self, connection: Connection, reason: str, why: DropReason) -> None:
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

    # ---- the sweeper: idle connections, and deadlines ---------------------------------------

    def _ensure_sweeper(self) -> None:
        """Start the sweeper, or start it again if it ever stopped."""
        if (self._sweeper is None or self._sweeper.done()) and not self._closing:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Every few seconds: close idle connections, drop those too slow to send or read."""
        loop = asyncio.get_running_loop()
        period = self.config.transfer_timeout / 2
        if self.config.idle_timeout > 0:
            period = min(period, self.config.idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for connection in self._connections():
                try:
                    self._sweep_one(connection, now)
                except Exception:  # one connection's surprise must not end the limits for all
                    logger.exception("sweeping connection %s failed; dropping it", connection.peer)
                    self._drop(connection, "its deadlines could not be checked", log=False)

    def _sweep_one(self, connection: Connection, now: float) -> None:
        if connection.dropped or connection.transport is None:
            return
        connection.check_deadlines(now)
        idle_timeout = self.config.idle_timeout
        limit = idle_timeout * (2 if connection.incoming else 1)
        if (
            idle_timeout > 0
            and connection.idle
            and not connection.buffer  # a frame on its way is no idleness
            and now - connection.last_active > limit
            and connection.transport is not None
        ):
            logger.debug("closing connection %s after %.0f s idle", connection.peer, limit)
            connection.transport.close()
