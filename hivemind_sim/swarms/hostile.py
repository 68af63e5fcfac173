"""Hostile peers: a simulated DHT peer that lies or floods, until it is made to play fair again.

``make_hostile(peers, name, behaviour, rng)`` turns peer ``name`` hostile and returns a
:class:`Hostile`: calling it undoes the behaviour, and ``acts`` counts what the peer did (lies
told in requests or answers, flood requests sent, answers left unread), so a test can tell
that an attack that changed nothing did happen.
The peer stays a working node (it answers, stores, looks up); the behaviour is added on top by
wrapping its own objects on the instance (its RPC handlers, the sender field of its requests,
its transport's delivery of answers) and by tasks that send what an attacker would send through
the ordinary wire format. ``hivemind_core`` is untouched: what the well-behaved peers do about
it is exactly what real peers would do. Behaviours (see ``BEHAVIOURS``):

* ``foreign_endpoint``: its requests announce another live peer's endpoint or a made-up one,
  and, on an expert server, its experts are declared at it; it pings some contacts each second
  so the lie travels;
* ``unparsable_endpoint``: the same with endpoints that do not parse (``junk``,
  ``1.2.3.4:0080``, an unbracketed IPv6, a name with a newline);
* ``junk_contacts``: every find answer's contacts are replaced by junk (random keys with bad
  endpoints, malformed entries);
* ``phantom_contacts``: every find answer's contacts are well-formed but nobody listens there;
* ``phantom_values``: every find answer claims a made-up value for each id asked, under the key
  it saw stored for that id when it saw one (so the claim can pass a key check), else made up;
* ``store_flood``: ``rate`` stores a second of fresh 1 KiB records to random contacts;
* ``never_read``: ``rate`` find requests a second (20 ids each) to random contacts, whose
  answers its transport drops unread.

Randomness comes from the ``rng`` handed in, and the order of everything from the swarm's own
ordered tables, so a run repeats.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import msgpack

from hivemind_core.dht import DHTNode, key_id
from hivemind_core.dht.codec import encode_node, encode_record
from hivemind_core.dht.ids import ID_BYTES
from hivemind_core.dht.storage import DHTRecord
from hivemind_core.moe.declare import declare_experts
from hivemind_core.moe.server import ExpertServer
from hivemind_core.net.frames import KIND_AND_ID, PREFIX, FrameKind, encode_frame

from .behaviours import HOSTILE_BEHAVIOURS
from .dht_swarm import DHTSwarm

logger = logging.getLogger(__name__)

BEHAVIOURS = HOSTILE_BEHAVIOURS
UNPARSABLE = ("junk", "1.2.3.4:0080", "::1:80", "host:99999", "bad\nendpoint")
"""Endpoints a hostile peer announces that no transport should dial."""
PHANTOM_PREFIX = "phantom-"
"""Made-up endpoints start so: no simulated peer is named like that (nobody listens there)."""
DEFAULT_RATE = 100.0
"""Requests per second of a flood when no ``rate`` is given."""
FLOOD_VALUE_BYTES = 1024
NEVER_READ_IDS = 20
ANNOUNCE_PERIOD = 1.0
"""How often a lying peer spreads its lie (pings, expert declarations)."""
MAX_REMEMBERED_KEYS = 4096
"""Keys a ``phantom_values`` peer remembers from stores it saw, to claim values under them."""

Undo = Callable[[], None]


class HasSwarm(Protocol):
    """A scenario's peers: the swarm, and the expert servers running on its nodes."""

    swarm: DHTSwarm
    servers: dict[str, ExpertServer]


def make_hostile(
    peers: HasSwarm | DHTSwarm,
    name: str,
    behaviour: str,
    rng: random.Random,
    *,
    rate: float | None = None,
) -> Hostile:
    """Make live peer ``name`` behave as ``behaviour`` says until the returned handle is called
    (undoing twice, or after the peer went down, is harmless)."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour must be one of {', '.join(BEHAVIOURS)}, got {behaviour!r}")
    swarm = peers if isinstance(peers, DHTSwarm) else peers.swarm
    servers = {} if isinstance(peers, DHTSwarm) else peers.servers
    if name not in swarm.nodes:
        raise ValueError(f"peer {name!r} is not up")
    hostile = Hostile(swarm, name, rng, servers.get(name))
    hostile.start(behaviour, DEFAULT_RATE if rate is None else rate)
    return hostile


class Hostile:
    """One hostile peer's behaviour: call it to undo; ``acts`` counts its hostile acts."""

    def __init__(self, swarm: DHTSwarm, name: str, rng: random.Random, server: ExpertServer | None) -> None:
        self.swarm = swarm
        self.name = name
        self.node: DHTNode = swarm.nodes[name]
        self.rng = rng
        self.server = server
        self.tasks: list[asyncio.Task[None]] = []
        self.undos: list[Undo] = []
        self.acts = 0

    def start(self, behaviour: str, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 requests per second, got {rate!r}")
        if behaviour in ("foreign_endpoint", "unparsable_endpoint"):
            self._lie_about_endpoint(self._foreign if behaviour == "foreign_endpoint" else self._unparsable)
        elif behaviour == "junk_contacts":
            self._rewrite_finds(self._junk_contacts)
        elif behaviour == "phantom_contacts":
            self._rewrite_finds(self._phantom_contacts)
        elif behaviour == "phantom_values":
            self._claim_values()
        elif behaviour == "store_flood":
            self._every(1 / rate, self._flood_store)
        else:
            self._never_read(rate)

    def __call__(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()
        for undo in reversed(self.undos):
            undo()
        self.undos.clear()

    @property
    def up(self) -> bool:
        return self.swarm.nodes.get(self.name) is self.node

    # ---- lying about where it listens ------------------------------------------------------

    def _foreign(self) -> str:
        self.acts += 1
        others = [node.endpoint for other, node in self.swarm.nodes.items() if other != self.name]
        live = [endpoint for endpoint in others if endpoint is not None]
        if live and self.rng.random() < 0.5:
            return self.rng.choice(live)
        return f"{PHANTOM_PREFIX}{self.rng.getrandbits(32)}"

    def _unparsable(self) -> str:
        self.acts += 1
        return self.rng.choice(UNPARSABLE)

    def _lie_about_endpoint(self, lie: Callable[[], str]) -> None:
        calls, public_key = self.node.calls, self.node.identity.public_key
        calls.me = lambda: encode_node(public_key, lie())  # type: ignore[method-assign]
        self.undos.append(lambda: calls.__dict__.pop("me", None))

        async def spread() -> None:
            contacts = self.node.routing_table.nearest(self.rng.getrandbits(160), 3)
            await asyncio.gather(*(self.node.calls.ping(contact.endpoint) for contact in contacts))
            if self.server is not None:
                expiration = self.node.now() + 3 * ANNOUNCE_PERIOD
                await declare_experts(self.node, list(self.server.backends), lie(), expiration)

        self._every(ANNOUNCE_PERIOD, spread)

    # ---- lying in find answers --------------------------------------------------------------

    def _rewrite_finds(self, contacts: Callable[[int], list[list[Any]]]) -> None:
        """Answer finds with the honest entries but the contacts ``contacts(count)`` makes."""

        def rewrite(body: Any, answer: Any) -> Any:
            self.acts += 1
            me, _, results = answer
            fake = contacts(body[2])  # the honest handler checked the body: [sender, ids, count]
            return [me, fake, [[entry, list(range(len(fake)))] for entry, _ in results]]

        self._wrap_handler("dht.find", rewrite)

    def _junk_contacts(self, count: int) -> list[list[Any]]:
        junk: list[list[Any]] = []
        for _ in range(count):
            kind = self.rng.randrange(3)
            key = self.rng.randbytes(32)
            if kind == 0:
                junk.append(encode_node(key, self.rng.choice(UNPARSABLE)))
            elif kind == 1:
                junk.append([self.rng.randbytes(self.rng.randrange(1, 31)), self.name])  # a short key
            else:
                junk.append([key, None])  # a contact nobody can call
        return junk

    def _phantom_contacts(self, count: int) -> list[list[Any]]:
        return [
            encode_node(self.rng.randbytes(32), f"{PHANTOM_PREFIX}{self.rng.getrandbits(32)}")
            for _ in range(count)
        ]

    def _claim_values(self) -> None:
        seen: dict[int, bytes] = {}  # id -> a key stored under it, as this peer saw it

        def remember(body: Any, answer: Any) -> Any:
            for raw in body[1] if isinstance(body, list) and len(body) == 2 else ():
                if isinstance(raw, list) and raw and isinstance(raw[0], bytes):
                    seen[key_id(raw[0])] = raw[0]
                    while len(seen) > MAX_REMEMBERED_KEYS:
                        del seen[next(iter(seen))]
            return answer

        def claim(body: Any, answer: Any) -> Any:
            self.acts += 1
            me, contacts, results = answer
            claimed = []
            for raw_id, (_, indices) in zip(body[1], results, strict=True):
                target = int.from_bytes(raw_id, "big")
                key = seen.get(target, self.rng.randbytes(16))
                value = msgpack.packb(f"phantom value {self.rng.getrandbits(32)}")
                # the latest expiration a node accepts: it beats every honest copy of the key
                expiration = self.node.now() + self.node.config.max_ttl
                claimed.append([[key, value, expiration, None], indices])
            return [me, contacts, claimed]

        self._wrap_handler("dht.store", remember)
        self._wrap_handler("dht.find", claim)

    def _wrap_handler(self, method: str, rewrite: Callable[[Any, Any], Any]) -> None:
        """Serve ``method`` as before, then ``rewrite(body, answer)`` its answer."""
        rpc = self.node.rpc
        honest = rpc._methods[method]  # the node's handler now (another behaviour's, if one overlaps)
        lies = True

        async def lying(peer: str, body: Any) -> Any:
            answer = await honest(peer, body)
            return rewrite(body, answer) if lies else answer

        def restore() -> None:
            nonlocal lies
            lies = False  # a behaviour that wrapped this one since restores it later: pass through
            if rpc._methods.get(method) is lying:
                rpc.unregister(method)
                rpc.register(method, honest)

        rpc.unregister(method)
        rpc.register(method, lying)
        self.undos.append(restore)

    # ---- floods -----------------------------------------------------------------------------

    def _target(self) -> str | None:
        """A random contact's endpoint, near a random id (None while the table is empty)."""
        contacts = self.node.routing_table.nearest(self.rng.getrandbits(160), 8)
        return self.rng.choice(contacts).endpoint if contacts else None

    async def _flood_store(self) -> None:
        target = self._target()
        if target is None:
            return
        key = msgpack.packb(f"flood/{self.name}/{self.rng.getrandbits(64)}")
        value = msgpack.packb(self.rng.randbytes(FLOOD_VALUE_BYTES))
        record = DHTRecord(key, None, value, self.node.now() + 3600.0)
        body = [self.node.calls.me(), [encode_record(record, False)]]
        self.acts += 1
        await self.node.rpc.call(target, "dht.store", body, timeout=self.node.config.rpc_timeout)

    def _never_read(self, rate: float) -> None:
        """Requests sent as raw frames under ids of its own; their answers are dropped unread."""
        transport = self.node.rpc.transport
        network, address = transport.network, transport.address  # type: ignore[attr-defined]
        request_ids = itertools.count(1 << 62)  # far above the ids the peer's own requests use
        mine: set[int] = set()
        deliver = transport.frame_arrived  # type: ignore[attr-defined]

        def arrived(src: str, frame: bytes) -> None:
            _, request_id = KIND_AND_ID.unpack_from(frame, PREFIX.size)
            if request_id in mine:
                mine.discard(request_id)  # an answer it never reads
                self.acts += 1
                return
            deliver(src, frame)

        async def send() -> None:
            target = self._target()
            if target is None:
                return
            ids = [self.rng.randbytes(ID_BYTES) for _ in range(NEVER_READ_IDS)]
            body = msgpack.packb(["dht.find", [self.node.calls.me(), ids, self.node.config.k]])
            request_id = next(request_ids)
            mine.add(request_id)
            network.send(address, target, encode_frame(FrameKind.REQUEST, request_id, body))

        transport.frame_arrived = arrived  # type: ignore[attr-defined]
        self.undos.append(lambda: transport.__dict__.pop("frame_arrived", None))
        self._every(1 / rate, send)

    # ---- running --------------------------------------------------------------------------

    def _every(self, period: float, act: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``act`` every ``period`` seconds while the peer is up (each in its own task)."""
        loop = asyncio.get_running_loop()
        running: dict[asyncio.Task[None], None] = {}  # ordered: cancels go out in a repeatable order

        async def attempt() -> None:
            try:
                await act()
            except Exception as error:  # an attacker does not care how it is answered
                logger.debug("hostile %s: %s", self.name, error)

        async def repeat() -> None:
            try:
                while self.up:
                    task = loop.create_task(attempt())
                    running[task] = None
                    task.add_done_callback(lambda done: running.pop(done, None))
                    await asyncio.sleep(period)
            finally:
                for task in list(running):
                    task.cancel()

        self.tasks.append(loop.create_task(repeat()))
