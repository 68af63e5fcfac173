"""TcpModel: what TCP adds to a frame's trip, for simulations closer to a real deployment.

The plain network model sends frames as datagrams: the first message to a peer costs one path
latency, and a lost frame is gone (the request times out). Real peers talk over TCP, so:

- **handshake**: the first frame between two peers, or the first after their connection sat
  idle for ``idle_timeout`` (the TCP transport's own idle close), was closed to make room in a
  peer's pool of ``max_connections``, or was reset by a crash or a close, leaves one round trip
  later (SYN, SYN-ACK);
- **retransmit**: a lost frame is sent again after a retransmission timeout (``max(rto_min,
  2 x round trip)``, doubling on every further loss) instead of vanishing; after ``max_tries``
  losses in a row the connection would break, and the frame is dropped;
- frames between two peers keep their order (TCP's is one byte stream): one held back by a
  handshake or a retransmission holds back the frames sent after it.

One connection per pair of peers carries both directions (the TCP transport dials one per
direction; the difference is one handshake per direction). Off by default: the plain model's
results and digests are unchanged. Its cost is one entry per pair of peers that talked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .network import NetworkStats


@dataclass(frozen=True)
class TcpOptions:
    """Which of TCP's effects to simulate (see the module docstring)."""

    handshake: bool = False
    retransmit: bool = False
    idle_timeout: float = 60.0
    max_connections: int = 256
    """Open connections per peer (the TCP transport's pool of outgoing ones): one more closes
    the least recently used, whose next frame shakes hands again."""
    rto_min: float = 0.2
    max_tries: int = 6

    def __post_init__(self) -> None:
        if not (
            self.idle_timeout > 0 and self.rto_min > 0 and self.max_tries >= 0 and self.max_connections >= 1
        ):
            raise ValueError(
                "TcpOptions needs idle_timeout > 0, rto_min > 0, max_tries >= 0 and max_connections >= 1, "
                f"got {self}"
            )

    @property
    def active(self) -> bool:
        return self.handshake or self.retransmit


@dataclass
class TcpModel:
    """Connection state per pair of peers, and the delay TCP adds to each frame."""

    options: TcpOptions
    stats: NetworkStats
    """Where retransmissions are counted (the network's)."""
    last_used: dict[str, dict[str, float]] = field(default_factory=dict)
    """address -> peer -> when a frame last went between them (their connection is open)."""
    held_until: dict[tuple[str, str], float] = field(default_factory=dict)
    """(src, dst) -> the departure of the latest frame: later frames do not leave before it."""

    def departure(
        self,
        src: str,
        dst: str,
        *,
        sent_at: float,
        now: float,
        rtt: float,
        lost: bool,
        survive: float,
        rng: random.Random,
    ) -> float | None:
        """When a frame written at ``now`` (off the sender's uplink at ``sent_at``) really
        leaves, or None if it is lost for good. ``lost``: whether its first try was lost; each
        retry gets through with probability ``survive``, drawn from ``rng``."""
        options = self.options
        leaves = sent_at
        if options.handshake and not self._open(src, dst, now):
            leaves += rtt
        if lost:
            if not options.retransmit:
                return None
            rto = max(options.rto_min, 2 * rtt)
            for _ in range(options.max_tries):
                leaves += rto
                rto *= 2
                self.stats.retransmitted += 1
                if rng.random() < survive:
                    break
            else:
                return None
        self._use(src, dst, now)
        key = (src, dst)
        held = self.held_until.get(key, 0.0)
        if held > leaves:
            leaves = held
        self.held_until[key] = leaves
        return leaves

    def _open(self, src: str, dst: str, now: float) -> bool:
        used = self.last_used.get(src, {}).get(dst)
        return used is not None and now - used <= self.options.idle_timeout

    def _use(self, src: str, dst: str, now: float) -> None:
        for here, there in ((src, dst), (dst, src)):
            peers = self.last_used.setdefault(here, {})
            peers.pop(there, None)
            peers[there] = now  # most recently used last
            if len(peers) > self.options.max_connections:  # the pool closes its least recently used
                self._close(here, next(iter(peers)))

    def forget(self, address: str) -> None:
        """``address`` crashed or closed: its connections are gone (the next frame shakes hands)."""
        for peer in list(self.last_used.get(address, {})):
            self._close(address, peer)
        self.last_used.pop(address, None)

    def _close(self, a: str, b: str) -> None:
        """The connection between ``a`` and ``b`` is gone, and its byte stream with it."""
        self.last_used.get(a, {}).pop(b, None)
        self.last_used.get(b, {}).pop(a, None)
        self.held_until.pop((a, b), None)
        self.held_until.pop((b, a), None)
