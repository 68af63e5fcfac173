"""The simulated network: who can reach whom, how fast, and what gets lost.

A message of S bytes from peer A to peer B:

1. waits for A's uplink to be free (FIFO behind A's earlier messages) and takes ``8*S/uplink``;
2. travels A's last mile, the backbone path between their nodes, and B's last mile; where the
   path has a bandwidth, it queues on the path's slowest edge on the way (FIFO in arrival
   order, see ``topology``) and takes ``8*S/bandwidth`` there;
3. waits for B's downlink (FIFO in arrival order) and takes ``8*S/downlink``;
4. is delivered, unless B crashed meanwhile.

Each link keeps only its "free again at" time, so a message costs one simpy event (one more
for a finite downlink, one more for a finite backbone path): no per-packet simulation. Loss
and partitions drop whole messages, which the requester sees as a timeout.

Faults a scenario can inject: ``crash``, ``partition``/``heal``, ``set_link`` (degrade a peer's
access link for a while) and ``freeze``/``thaw`` (a stopped process whose kernel still holds
its connections, like SIGSTOP/SIGCONT).
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

import simpy
from simpy.events import NORMAL

from .tcp_model import TcpModel, TcpOptions
from .topology import Bottleneck, Node, Topology
from .trace import TraceDigest


class _Due:
    """A simpy event reduced to what ``Environment.step`` reads of an event that succeeds: its
    callbacks and ``_ok``. Frames are the bulk of a simulation's events, and a ``Timeout``
    checks and stores what a delivery never needs; scheduled with ``Environment.schedule`` it
    takes the same place in simpy's queue as a ``Timeout`` of the same delay would."""

    __slots__ = ("callbacks",)
    _ok = True

    def __init__(self, callback: Callable[[object], None]) -> None:
        self.callbacks: list[Callable[[object], None]] | None = [callback]


class Receiver(Protocol):
    """What the network calls on a peer's transport (``SimTransport`` is one)."""

    def frame_arrived(self, src: str, frame: bytes) -> None:
        """A frame from ``src`` has been delivered."""

    def reset_received(self, src: str) -> None:
        """``src`` closed or refused every exchange with this peer (a TCP reset)."""

    def connection_dropped(self, src: str) -> None:
        """``src`` dropped the connection this peer dialled to it (a protocol violation): this
        peer's requests to ``src`` are over, ``src``'s requests to this peer are not."""

    def crash(self) -> None:
        """The machine died: stop everything at once and tell nobody."""


@dataclass(frozen=True)
class AccessLink:
    """A peer's own connection to its backbone node."""

    uplink_bps: float = math.inf
    """Upload bandwidth in bits per second."""
    downlink_bps: float = math.inf
    """Download bandwidth in bits per second."""
    latency: float = 0.0
    """One-way last-mile latency in seconds."""
    loss: float = 0.0
    """Probability that a message through this link is lost."""

    def __post_init__(self) -> None:
        if not (self.uplink_bps > 0 and self.downlink_bps > 0):
            raise ValueError(f"bandwidth must be positive, got up={self.uplink_bps} down={self.downlink_bps}")
        if not 0 <= self.latency < math.inf:
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {self.latency}")
        if not 0 <= self.loss <= 1:
            raise ValueError(f"loss must be a probability in [0, 1], got {self.loss}")

    def degraded(
        self, *, extra_latency: float = 0.0, loss: float = 0.0, bandwidth_bps: float = math.inf
    ) -> AccessLink:
        """This link made worse: ``extra_latency`` added, ``loss`` on top of its own (independent
        drops), both directions capped at ``bandwidth_bps``. A degrade fault sets it with
        ``SimNetwork.set_link`` and later sets the original back."""
        if not 0 <= loss <= 1:
            raise ValueError(f"loss must be a probability in [0, 1], got {loss}")
        return replace(
            self,
            latency=self.latency + extra_latency,
            loss=self.loss + loss - self.loss * loss,  # independent drops; exact when either is 0
            uplink_bps=min(self.uplink_bps, bandwidth_bps),
            downlink_bps=min(self.downlink_bps, bandwidth_bps),
        )


class Signal(enum.Enum):
    """A connection event the network carries besides frames."""

    RESET = "reset"
    """Every exchange between the two peers is over (``SimNetwork.reset``)."""
    DROP = "drop"
    """The connection the receiver dialled to the sender is over (``SimNetwork.drop``)."""


Held = tuple[str, "bytes | Signal"]
"""(peer, frame or connection event) held by a frozen peer's kernel."""


DEFAULT_FROZEN_BUFFER = 64 * 1024 * 1024
"""Bytes a frozen peer's kernel holds for it (both directions together) before dropping frames."""


class PeerState(enum.Enum):
    UP = "up"
    FROZEN = "frozen"  # the process is stopped (SIGSTOP): connections stay up, frames wait
    CLOSED = "closed"  # the process exited: connections to it are refused
    CRASHED = "crashed"  # the machine is gone: nothing answers, senders time out


@dataclass
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    bytes_delivered: int = 0
    dropped_loss: int = 0
    dropped_partition: int = 0
    dropped_unreachable: int = 0
    dropped_frozen: int = 0
    """Frames beyond a frozen peer's buffer (see ``SimNetwork.freeze``)."""
    retransmitted: int = 0
    """Frames sent again after a loss (only with the TCP model's ``retransmit``)."""


@dataclass(eq=False)
class _Frozen:
    """What the kernel of a stopped process holds until it resumes."""

    transport: Receiver
    buffer_bytes: int
    inbox: list[Held] = field(default_factory=list)
    """(source, frame or signal) in arrival order."""
    outbox: list[Held] = field(default_factory=list)
    """(destination, frame or signal) in the order the peer's code wrote them."""
    held_bytes: int = 0

    def hold(self, box: list[Held], address: str, frame: bytes | Signal) -> bool:
        size = len(frame) if isinstance(frame, bytes) else 0
        if self.held_bytes + size > self.buffer_bytes:
            return False
        self.held_bytes += size
        box.append((address, frame))
        return True


@dataclass(eq=False)
class _Peer:
    address: str
    node: Node
    link: AccessLink
    up_bytes_per_s: float = field(init=False)
    down_bytes_per_s: float = field(init=False)
    up_free_at: float = 0.0
    down_free_at: float = 0.0
    state: PeerState = PeerState.CLOSED
    transport: Receiver | None = None
    """None while the peer is down or frozen: ``_deliver`` checks only this on the hot path."""
    frozen: _Frozen | None = None

    def __post_init__(self) -> None:
        self.set_link(self.link)

    def set_link(self, link: AccessLink) -> None:
        self.link = link
        self.up_bytes_per_s = link.uplink_bps / 8
        self.down_bytes_per_s = link.downlink_bps / 8


class SimNetwork:
    """Carries frames between simulated transports in virtual time."""

    def __init__(
        self,
        env: simpy.Environment,
        topology: Topology,
        *,
        rng: random.Random,
        trace: TraceDigest | None = None,
        jitter: float = 0.0,
        loss: float = 0.0,
        tcp: TcpOptions | None = None,
    ) -> None:
        """``tcp``: TCP's handshakes, retransmissions and ordering (``tcp_model``); None or all
        off: frames travel as datagrams."""
        if not 0 <= jitter <= 10:
            raise ValueError(f"jitter is a fraction of the path latency in [0, 10], got {jitter}")
        self.env = env
        self.topology = topology
        self.rng = rng
        self.trace = trace
        self.jitter = jitter
        self.loss = 0.0
        """Probability that a frame is lost on any path, besides the access links' own loss."""
        self.set_loss(loss)
        self.stats = NetworkStats()
        self._peers: dict[str, _Peer] = {}
        self._group_of: dict[str, int] | None = None
        self._bottleneck = topology.bottleneck if topology.limited else None  # None: nothing to check
        self._edge_free_at: dict[tuple[Node, Node], float] = {}
        self._tcp = TcpModel(tcp, self.stats) if tcp is not None and tcp.active else None
        self._queue, self._event_ids = env._queue, env._eid  # simpy's own (pinned below 5)

    # ---- membership -----------------------------------------------------------------------

    def add_peer(self, address: str, *, node: Node | None = None, link: AccessLink | None = None) -> None:
        """Place a machine on the network (its transport comes up separately)."""
        if address in self._peers:
            raise ValueError(f"a peer with address {address!r} already exists")
        if node is None:
            node = self.topology.nodes[0]
        elif node not in self.topology:
            raise ValueError(f"backbone node {node!r} is not in topology {self.topology.name!r}")
        self._peers[address] = _Peer(address, node, link or AccessLink())

    def attach(self, address: str, transport: Receiver) -> None:
        """Bring a peer's transport up (first start, or restart after a crash or close)."""
        peer = self._peer(address)
        if peer.state is PeerState.UP or peer.state is PeerState.FROZEN:
            raise ValueError(f"peer {address!r} already has a running transport")
        peer.transport = transport
        peer.state = PeerState.UP

    def detach(self, address: str, *, crashed: bool) -> None:
        if self._tcp is not None:
            self._tcp.forget(address)
        peer = self._peer(address)
        peer.transport = None
        peer.frozen = None  # a stopped process that dies takes what its kernel held with it
        peer.state = PeerState.CRASHED if crashed else PeerState.CLOSED

    def crash(self, address: str) -> None:
        """The machine dies mid-whatever: no goodbye, no answers, its peers time out."""
        peer = self._peer(address)
        transport = peer.frozen.transport if peer.frozen is not None else peer.transport
        if transport is not None:
            transport.crash()

    def state(self, address: str) -> PeerState:
        return self._peer(address).state

    def link(self, address: str) -> AccessLink:
        """The peer's access link as it is now (``set_link`` changes it)."""
        return self._peer(address).link

    def node(self, address: str) -> Node:
        """The backbone node the peer is attached to."""
        return self._peer(address).node

    @property
    def addresses(self) -> list[str]:
        return list(self._peers)

    # ---- faults ---------------------------------------------------------------------------

    def set_link(self, address: str, link: AccessLink) -> None:
        """Change a peer's bandwidth, latency or loss from now on.

        Frames already sent keep the latency, loss and uplink time they were given at send time;
        those still to reach this peer's downlink are paced at the new downlink rate. Frames
        queued on its uplink are not re-paced: the link is free again when it said it would be.
        """
        self._peer(address).set_link(link)

    def set_loss(self, loss: float) -> None:
        """Loss probability per frame on every path (the topology's), from now on; it combines
        with the access links' loss as independent drops."""
        if not 0 <= loss <= 1:
            raise ValueError(f"path loss must be a probability in [0, 1], got {loss}")
        self.loss = loss

    def partition(self, groups: Iterable[Collection[str]]) -> None:
        """Cut the listed groups apart; peers in no group form one more group together.

        A group may name peers not on the network yet (a crowd that joins later): they join on
        their side of the cut.
        """
        group_of: dict[str, int] = {}
        for index, group in enumerate(groups):
            for address in group:
                if address in group_of:
                    raise ValueError(f"peer {address!r} is in more than one partition group")
                group_of[address] = index
        self._group_of = group_of

    def heal(self) -> None:
        self._group_of = None

    def freeze(self, address: str, *, buffer_bytes: int = DEFAULT_FROZEN_BUFFER) -> bool:
        """Stop a peer's process as SIGSTOP would; False (and nothing changes) unless it was up.

        Frozen: its connections stay up, so senders get no reset and their requests time out on
        their own deadlines; frames reaching it (after its downlink, as a kernel receives them)
        and resets are held in arrival order; whatever its code writes (frames, resets) is held
        too and only sent at ``thaw``. Beyond ``buffer_bytes`` held in all, frames are dropped
        (counted in ``stats.dropped_frozen``), as a full socket buffer would stall them.

        Not frozen: the peer's own asyncio tasks and timers, which nothing ties to a peer on the
        shared loop. Its handlers and timeouts keep running in virtual time, but they can neither
        hear nor be heard until ``thaw``, so the world sees a silent peer; the one difference from
        SIGSTOP is that the peer's own request timeouts fire while frozen instead of at resume.
        A frozen peer can still be crashed (everything held is lost) or closed (its goodbye
        resets are lost: a stopped process cannot send them).
        """
        peer = self._peer(address)
        if peer.state is not PeerState.UP or peer.transport is None:
            return False
        peer.frozen = _Frozen(peer.transport, buffer_bytes)
        peer.transport = None
        peer.state = PeerState.FROZEN
        return True

    def thaw(self, address: str) -> bool:
        """Resume a frozen peer (SIGCONT); False (and nothing changes) unless it was frozen.

        What it wrote while frozen leaves first, through its uplink from now on, then what its
        kernel held for it is delivered at once, in arrival order.
        """
        peer = self._peer(address)
        frozen = peer.frozen
        if frozen is None:
            return False
        peer.frozen = None
        peer.transport = frozen.transport
        peer.state = PeerState.UP
        for dst, frame in frozen.outbox:
            if isinstance(frame, Signal):
                self._signal(address, dst, frame)
            else:
                self.send(address, dst, frame)
        for src, frame in frozen.inbox:
            if peer.transport is not frozen.transport:
                break  # what it just received made it crash or close
            if isinstance(frame, Signal):
                self._deliver_signal(src, peer, frame, None)
            else:
                self._deliver(src, peer, frame, None)
        return True

    # ---- physics --------------------------------------------------------------------------

    def path_latency(self, src: str, dst: str) -> float:
        """One-way propagation latency between two peers, excluding bandwidth and jitter."""
        a, b = self._peer(src), self._peer(dst)
        return a.link.latency + self.topology.latency(a.node, b.node) + b.link.latency

    def send(self, src: str, dst: str, frame: bytes) -> None:
        """Put ``frame`` on the wire from ``src`` to ``dst``; it may be delayed or dropped."""
        sender = self._peers[src]
        if sender.state is not PeerState.UP:
            if sender.frozen is not None:
                self._hold(sender.frozen, sender.frozen.outbox, dst, frame)
            return
        stats = self.stats
        stats.sent += 1
        now = self.env.now
        start = sender.up_free_at if sender.up_free_at > now else now
        sender.up_free_at = sent_at = start + len(frame) / sender.up_bytes_per_s
        receiver = self._peers.get(dst)
        if receiver is None:
            stats.dropped_unreachable += 1
            return
        if self._group_of is not None and self.cut(src, dst):
            stats.dropped_partition += 1
            return
        lost = bool(self.loss or sender.link.loss or receiver.link.loss) and self._lost(sender, receiver)
        tcp = self._tcp
        if lost and tcp is None:
            stats.dropped_loss += 1
            return
        backbone = self.topology.latency(sender.node, receiver.node)
        latency = sender.link.latency + backbone + receiver.link.latency
        if latency == math.inf:
            stats.dropped_unreachable += 1
            return
        if tcp is not None:
            leaves = tcp.departure(
                src,
                dst,
                sent_at=sent_at,
                now=now,
                rtt=2 * latency,
                lost=lost,
                survive=self._survival(sender, receiver),
                rng=self.rng,
            )
            if leaves is None:
                stats.dropped_loss += 1
                return
            sent_at = leaves
        stretch = 1.0
        if self.jitter:
            stretch = 1 + self.jitter * self.rng.random()
            latency *= stretch
        if self._bottleneck is not None:
            bottleneck = self._bottleneck(sender.node, receiver.node)
            if bottleneck is not None:
                ahead = (sender.link.latency + bottleneck.offset) * stretch
                self._after(
                    sent_at + ahead - now,
                    partial(self._cross_backbone, src, receiver, frame, bottleneck, latency - ahead),
                )
                return
        self._after(sent_at + latency - now, partial(self._reach_downlink, src, receiver, frame))

    def reset(self, src: str, dst: str) -> None:
        """Tell ``dst`` that every exchange it has with ``src`` is over (a TCP reset)."""
        self._signal(src, dst, Signal.RESET)

    def drop(self, src: str, dst: str) -> None:
        """Tell ``dst`` that ``src`` dropped the connection ``dst`` dialled to it, as TCP's abort
        of that one connection would: ``dst``'s requests to ``src`` fail, nothing else does."""
        self._signal(src, dst, Signal.DROP)

    def _signal(self, src: str, dst: str, signal: Signal) -> None:
        sender = self._peers.get(src)
        if sender is not None and sender.frozen is not None:
            self._hold(sender.frozen, sender.frozen.outbox, dst, signal)
            return
        receiver = self._peers.get(dst)
        if receiver is None or self.cut(src, dst):
            return
        arrival = self.env.timeout(self.path_latency(src, dst))
        arrival.callbacks.append(partial(self._deliver_signal, src, receiver, signal))

    # ---- internals ------------------------------------------------------------------------

    def _peer(self, address: str) -> _Peer:
        try:
            return self._peers[address]
        except KeyError:
            raise KeyError(f"no peer with address {address!r} on this network") from None

    def cut(self, src: str, dst: str) -> bool:
        """Whether a partition separates ``src`` from ``dst`` now."""
        group_of = self._group_of
        return group_of is not None and group_of.get(src, -1) != group_of.get(dst, -1)

    def _lost(self, sender: _Peer, receiver: _Peer) -> bool:
        return self.rng.random() >= self._survival(sender, receiver)

    def _survival(self, sender: _Peer, receiver: _Peer) -> float:
        return (1 - self.loss) * (1 - sender.link.loss) * (1 - receiver.link.loss)

    def _cross_backbone(
        self,
        src: str,
        receiver: _Peer,
        frame: bytes,
        bottleneck: Bottleneck,
        remaining: float,
        _event: object,
    ) -> None:
        """The frame reached its path's bottleneck edge: queue there, then travel on."""
        now = self.env.now
        free_at = self._edge_free_at.get(bottleneck.edge, now)
        start = free_at if free_at > now else now
        self._edge_free_at[bottleneck.edge] = done = start + len(frame) / bottleneck.bytes_per_s
        self._after(done + remaining - now, partial(self._reach_downlink, src, receiver, frame))

    def _reach_downlink(self, src: str, receiver: _Peer, frame: bytes, _event: object) -> None:
        now = self.env.now
        start = receiver.down_free_at if receiver.down_free_at > now else now
        receiver.down_free_at = done = start + len(frame) / receiver.down_bytes_per_s
        if done > now:
            self._after(done - now, partial(self._deliver, src, receiver, frame))
        else:
            self._deliver(src, receiver, frame, None)

    def _after(self, delay: float, callback: Callable[[object], None]) -> None:
        """Call ``callback`` ``delay`` (>= 0) seconds from now, in simpy's queue: the entry
        ``Environment.schedule`` would push, pushed here (see ``_Due``)."""
        heapq.heappush(self._queue, (self.env._now + delay, NORMAL, next(self._event_ids), _Due(callback)))

    def _hold(self, frozen: _Frozen, box: list[Held], address: str, frame: bytes | Signal) -> None:
        if not frozen.hold(box, address, frame):
            self.stats.dropped_frozen += 1

    def _deliver(self, src: str, receiver: _Peer, frame: bytes, _event: object) -> None:
        transport = receiver.transport
        if transport is None:
            if receiver.frozen is not None:
                self._hold(receiver.frozen, receiver.frozen.inbox, src, frame)
                return
            if receiver.state is PeerState.CLOSED:
                self.reset(receiver.address, src)  # connection refused
            self.stats.dropped_unreachable += 1
            return
        self.stats.delivered += 1
        self.stats.bytes_delivered += len(frame)
        if self.trace is not None:
            self.trace.record(self.env.now, src, receiver.address, frame)
        transport.frame_arrived(src, frame)

    def _deliver_signal(self, src: str, receiver: _Peer, signal: Signal, _event: object) -> None:
        transport = receiver.transport
        if transport is None:
            if receiver.frozen is not None:
                self._hold(receiver.frozen, receiver.frozen.inbox, src, signal)
            return
        if self.trace is not None:
            self.trace.record(self.env.now, src, receiver.address, b"", kind=signal.value)
        if signal is Signal.RESET:
            transport.reset_received(src)
        else:
            transport.connection_dropped(src)
