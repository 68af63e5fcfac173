"""What a TCP transport tells about itself: connections, queued bytes, and why it dropped some."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


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
