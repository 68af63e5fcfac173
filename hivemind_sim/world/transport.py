"""SimTransport: the Transport interface over the simulated network.

It moves the very frames the TCP transport would put on a socket, so message sizes (and
bandwidth costs) are real. There are no connections: the link to a peer is its address, a
graceful close sends resets to the peers it was exchanging with (as TCP would), and a crash
sends nothing at all. A protocol violation (a malformed or oversized frame, an unknown kind,
a duplicate request id, a body the handler refuses) is answered as TCP answers it: the link is
dropped, on both sides, so the offender's requests fail with ``PeerUnavailable`` and whatever
was being served for it is cancelled, never with an error frame.
"""

from __future__ import annotations

import logging

from hivemind_core.net.errors import TransportClosed
from hivemind_core.net.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    KIND_AND_ID,
    PREFIX,
    FrameKind,
    encode_frame,
)
from hivemind_core.net.multiplex import FramedTransport, Link
from hivemind_core.net.transport import Endpoint, RequestHandler

from .network import SimNetwork

logger = logging.getLogger(__name__)


class SimTransport(FramedTransport):
    """A peer's network stack in the simulation, reachable at ``address``."""

    _eager_serving = True  # opening a link never waits here: handlers start as frames arrive

    def __init__(
        self, network: SimNetwork, address: str, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> None:
        super().__init__(max_frame_size=max_frame_size)
        self.network = network
        self.address = address
        network.attach(address, self)

    @property
    def endpoint(self) -> Endpoint | None:
        return self.address if self._handler is not None else None

    async def listen(self, handler: RequestHandler) -> Endpoint:
        if self._closing:
            raise TransportClosed("cannot listen: this transport is closed")
        if self._handler is not None:
            raise RuntimeError(f"already listening as {self.address}")
        self._handler = handler
        return self.address

    def crash(self) -> None:
        """Die at once: stop serving, fail own requests, tell nobody."""
        if self._closing:
            return
        self._closing = True
        self.network.detach(self.address, crashed=True)
        self._abandon(f"this peer ({self.address}) crashed while its request to {{peer}} was in flight")

    # ---- called by the network ------------------------------------------------------------

    def frame_arrived(self, src: str, frame: bytes) -> None:
        size = len(frame)
        if not (
            HEADER_SIZE <= size <= self.max_frame_size and PREFIX.unpack_from(frame)[0] == size - PREFIX.size
        ):
            problem = self._malformed(frame)  # what exactly, in TCP's words
            if problem is not None:
                self._reject(src, 0, problem)
                return
        kind, request_id = KIND_AND_ID.unpack_from(frame, PREFIX.size)
        self._frame_received(src, kind, request_id, frame[HEADER_SIZE:])

    def reset_received(self, src: str) -> None:
        self._link_lost(src, f"connection to {src} lost: the peer closed or refused it")

    def connection_dropped(self, src: str) -> None:
        self._link_lost(src, f"connection to {src} lost: the peer dropped it", serving=False)

    # ---- FramedTransport hooks ------------------------------------------------------------

    async def _open_link(self, peer: Endpoint, deadline: float) -> Link:
        return peer

    def _open_link_now(self, peer: Endpoint) -> Link:
        return peer  # the link is the address: nothing to open

    def _write(self, link: Link, kind: FrameKind, request_id: int, payload: bytes) -> None:
        self.network.send(self.address, link, encode_frame(kind, request_id, payload))

    def _sender(self, link: Link) -> Endpoint:
        return link

    def _reject(self, link: Link, request_id: int, reason: str) -> None:
        """Drop the connection the offender dialled, as TCP does: what we serve for it is
        cancelled and its requests to us fail; our own requests to it (another connection) go on."""
        logger.warning("closing connection %s: %s", link, reason)
        self.network.drop(self.address, link)
        self._link_lost(link, f"connection from {link} dropped: {reason}", own_requests=False)

    def _malformed(self, frame: bytes) -> str | None:
        """What TCP's framing would refuse in ``frame`` (the same checks, the same words), if anything."""
        if len(frame) < PREFIX.size:
            return f"frame of {len(frame)} bytes is shorter than its length prefix"
        (length,) = PREFIX.unpack_from(frame)
        if length + PREFIX.size > self.max_frame_size:
            return f"frame of {length + PREFIX.size} bytes exceeds the {self.max_frame_size}-byte limit"
        if length < KIND_AND_ID.size:
            return f"frame length {length} is shorter than the frame header"
        if length + PREFIX.size != len(frame):
            return f"frame length {length} does not match the {len(frame) - PREFIX.size} bytes that follow"
        return None

    def _stop_accepting(self) -> None:
        pass  # new requests are answered with an error once _closing is set

    async def _close_links(self) -> None:
        for peer in self._active_links():
            self.network.reset(self.address, peer)
        self.network.detach(self.address, crashed=False)
