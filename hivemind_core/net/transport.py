"""The Transport interface: move request bytes to a peer and bring its response bytes back.

Everything above this line (RPC, DHT, experts) talks to a ``Transport`` only, which is how the
same code runs over real TCP sockets and over the simulated network.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

Endpoint = str
"""Where a peer listens: ``"host:port"`` for TCP, a peer name in simulation."""

RequestHandler = Callable[[Endpoint, bytes], Awaitable[bytes]]
"""Serves one request: called with the sender's endpoint and the payload, returns the response."""


class Transport(abc.ABC):
    """Request/response messaging between peers.

    Implementations multiplex many concurrent requests, enforce a maximum frame size, and turn
    every failure into a subclass of :class:`~hivemind_core.net.errors.TransportError`.
    """

    @property
    @abc.abstractmethod
    def endpoint(self) -> Endpoint | None:
        """Where others can reach this peer, or ``None`` in client mode (not listening)."""

    @abc.abstractmethod
    async def listen(self, handler: RequestHandler) -> Endpoint:
        """Start serving incoming requests with ``handler``; returns this peer's endpoint."""

    @abc.abstractmethod
    async def request(self, peer: Endpoint, payload: bytes, *, timeout: float) -> bytes:
        """Send ``payload`` to ``peer`` and return its response.

        Raises ``RequestTimeout`` after ``timeout`` seconds, ``PeerUnavailable`` when the peer
        cannot be reached or goes away mid-request, ``RemoteError`` when the peer's handler
        failed, and ``FrameTooLarge`` when the payload exceeds the frame limit. Cancelling the
        awaiting task tells the peer to stop working on the request.
        """

    @abc.abstractmethod
    async def close(self, *, grace: float = 1.0) -> None:
        """Stop serving and release resources.

        Requests being served get up to ``grace`` seconds to finish; this side's own pending
        requests fail with ``TransportClosed``.
        """

    def check_endpoint(self, endpoint: Endpoint) -> None:
        """Raise ValueError unless ``endpoint`` is an address this transport could reach.

        Peers announce where they listen; a lie must be refused where it enters, before anyone
        stores it or dials it. This default accepts any non-empty name (simulated addresses).
        """
        if not isinstance(endpoint, str) or not endpoint or not endpoint.isprintable():
            raise ValueError(f"invalid endpoint {endpoint!r}: expected a non-empty printable name")

    def same_host(self, announced: Endpoint, caller: Endpoint) -> bool:
        """Whether a peer whose request came from ``caller`` may claim to listen at ``announced``.

        This default compares everything before the last colon (the whole name when there is
        none), which is the host for ``host:port`` endpoints.
        """
        return (announced.rpartition(":")[0] or announced) == (caller.rpartition(":")[0] or caller)
