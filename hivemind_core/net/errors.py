"""Errors raised by transports and the RPC layer, typed so callers can tell failures apart."""

from __future__ import annotations


class TransportError(Exception):
    """A request could not be completed because of the network or the peer."""


class PeerUnavailable(TransportError):
    """The peer refused the connection, closed it, or is otherwise unreachable."""


class RequestTimeout(TransportError, TimeoutError):
    """No response arrived before the request's deadline."""


class TransportClosed(TransportError):
    """This side's transport is closed (or closing) and cannot send any more."""


class FrameTooLarge(TransportError, ValueError):
    """A message does not fit in the transport's maximum frame size."""


class ProtocolError(Exception):
    """A peer broke the wire protocol (malformed frame or body).

    A request handler raises it to say "this connection cannot be trusted": the TCP
    transport then closes only that connection, with the reason in the log.
    """


class RemoteError(Exception):
    """The remote peer received the request but failed to handle it.

    ``remote_type`` is the name of the exception raised on the remote side and
    ``remote_message`` its text; ``method`` is the RPC method, when known.
    """

    def __init__(
        self,
        remote_message: str,
        *,
        remote_type: str = "RemoteError",
        peer: str | None = None,
        method: str | None = None,
    ) -> None:
        where = f" from {peer}" if peer else ""
        what = f" in {method!r}" if method else ""
        super().__init__(f"{remote_type}{what}{where}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.peer = peer
        self.method = method


class UnknownMethodError(RemoteError):
    """The remote peer does not serve the requested RPC method."""
