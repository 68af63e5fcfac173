"""Tunable settings of a TCP transport, with defaults that suit a peer on the public internet."""

from __future__ import annotations

from dataclasses import dataclass

from ..delays import EmulatedDelays
from ..endpoints import check_remote_endpoint, format_endpoint
from ..frames import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE

ASYNCIO_WRITE_LIMIT = 64 * 1024
"""asyncio's default high-water mark for a transport's buffer: the default per-connection backlog."""


@dataclass(frozen=True)
class TcpConfig:
    """Settings of a :class:`TcpTransport`; each is checked here, so a bad one fails where it is set."""

    host: str = "127.0.0.1"
    """Address to listen on, and to dial from when it is one specific address."""
    port: int = 0
    """Port to listen on; 0 picks a free one."""
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    """Largest frame either way, header included; a peer that sends a bigger one is dropped."""
    max_incoming: int = 1024
    """Incoming connections open at once; more are refused (logged once per 10 s)."""
    max_incoming_per_host: int | None = 64
    """Incoming connections from one remote host (IPv6: one /64); None: no per-host cap."""
    max_outgoing: int = 256
    """Outgoing connections: the least recently used idle one is closed to make room, and when
    every one is busy a new request waits for a slot (up to ``connect_timeout``)."""
    max_concurrent_requests: int = 256
    """Requests served at once per connection; more wait (backpressure, not errors)."""
    max_connection_backlog: int = ASYNCIO_WRITE_LIMIT
    """Bytes queued for one peer that has not read them, past which it is served no more until
    it reads (at most 4 of its requests wait meanwhile)."""
    max_total_backlog: int = 128 * 1024 * 1024
    """Bytes queued for all connections together, past which each connection may queue 16 KiB
    only, until the total halves."""
    transfer_timeout: float = 10.0
    """Seconds a frame may take, on top of its size at ``min_transfer_rate``; a new connection
    must send its first frame within it, and a backlogged one must read at that rate over it."""
    min_transfer_rate: float = 32 * 1024
    """Bytes per second a peer must at least send a frame at, and read its backlog at."""
    connect_timeout: float = 5.0
    """Seconds to connect, waiting for a slot of the outgoing pool included."""
    idle_timeout: float = 60.0
    """Seconds after which an idle connection is closed (incoming ones after twice that, so the
    dialling side closes first); 0: never."""
    backlog: int = 1024
    """Connections the kernel queues for the listening socket before they are accepted."""
    announce_host: str | None = None
    """The address peers are told to dial, where it is not the bound one (a public address,
    one interface's when listening on all of them); required when listening on all of them."""
    announce_port: int | None = None
    """The port peers are told to dial, where it is not the bound one (forwarded through NAT)."""
    delays: EmulatedDelays | None = None
    """One-way delays per destination that connections this side dials add in user space (see
    ``hivemind_core.net.delays``); deployments only, never by default."""

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"TcpConfig.port must be 0..65535, got {self.port}")
        if self.max_frame_size <= HEADER_SIZE:
            raise ValueError(
                f"TcpConfig.max_frame_size must exceed the {HEADER_SIZE}-byte header, "
                f"got {self.max_frame_size}"
            )
        for name in ("max_incoming", "max_outgoing", "max_concurrent_requests", "backlog"):
            if getattr(self, name) < 1:
                raise ValueError(f"TcpConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_incoming_per_host is not None and self.max_incoming_per_host < 1:
            raise ValueError(
                "TcpConfig.max_incoming_per_host must be at least 1 or None, "
                f"got {self.max_incoming_per_host}"
            )
        if not 0 < self.max_connection_backlog <= self.max_total_backlog:
            raise ValueError(
                f"TcpConfig needs 0 < max_connection_backlog ({self.max_connection_backlog}) <= "
                f"max_total_backlog ({self.max_total_backlog})"
            )
        for name in ("transfer_timeout", "min_transfer_rate", "connect_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TcpConfig.{name} must be positive, got {getattr(self, name)!r}")
        if not self.idle_timeout >= 0:
            raise ValueError(
                f"TcpConfig.idle_timeout must be 0 (never) or positive, got {self.idle_timeout!r}"
            )
        if self.announce_port is not None and not 0 < self.announce_port < 65536:
            raise ValueError(f"TcpConfig.announce_port must be 1..65535, got {self.announce_port}")
        if self.announce_host is not None:
            try:
                check_remote_endpoint(format_endpoint(self.announce_host, self.announce_port or 1))
            except ValueError as error:
                raise ValueError(f"TcpConfig.announce_host: {error}") from None
