"""Networking: the Transport interface, the TCP transport, and the RPC layer."""

from .errors import (
    FrameTooLarge,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    TransportClosed,
    TransportError,
    UnknownMethodError,
)
from .multiplex import FramedTransport
from .rpc import RPC
from .tcp import DropReason, TcpStats, TcpTransport, format_endpoint, parse_endpoint
from .transport import Endpoint, RequestHandler, Transport

__all__ = [
    "RPC",
    "DropReason",
    "Endpoint",
    "FrameTooLarge",
    "FramedTransport",
    "PeerUnavailable",
    "ProtocolError",
    "RemoteError",
    "RequestHandler",
    "RequestTimeout",
    "TcpStats",
    "TcpTransport",
    "Transport",
    "TransportClosed",
    "TransportError",
    "UnknownMethodError",
    "format_endpoint",
    "parse_endpoint",
]
