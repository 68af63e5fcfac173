"""Networking: the Transport interface, the TCP transport, and the RPC layer."""

from .endpoints import (
    canonical_endpoint,
    check_remote_endpoint,
    format_endpoint,
    is_canonical_endpoint,
    parse_endpoint,
)
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
from .tcp import DropReason, TcpConfig, TcpStats, TcpTransport
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
    "TcpConfig",
    "TcpStats",
    "TcpTransport",
    "Transport",
    "TransportClosed",
    "TransportError",
    "UnknownMethodError",
    "canonical_endpoint",
    "check_remote_endpoint",
    "format_endpoint",
    "is_canonical_endpoint",
    "parse_endpoint",
]
