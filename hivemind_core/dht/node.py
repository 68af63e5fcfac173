"""DHTNode: the asynchronous face of the DHT (store, get, find_nearest, shutdown)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import numbers
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from ..net import RPC, Transport, TransportClosed
from ..world import default_clock, default_rng, running_world
from .background import Background
from .calls import FindResult, PeerCalls
from .config import DHTConfig
from .handlers import DHTHandlers
from .identity import Identity
from .ids import deserialize_key, key_id, serialize_key
from .maintenance import Maintenance
from .membership import Membership
from .routing import Contact, RoutingTable
from .stats import DHTStats
from .storage import DHTRecord, LocalStorage, StoredEntry
from .traverse import LookupResult, traverse
from .validation import RecordRules, RecordValidator, SignatureValidator, ValidatorChain

logger = logging.getLogger(__name__)


class BootstrapError(ConnectionError):
    """None of the initial peers could be reached, so the node cannot join the network."""


@dataclass(frozen=True, slots=True)
class ValueWithExpiration:
    """A value read from the DHT; for dictionary keys, ``value`` maps subkeys to these."""

    value: Any
    expiration_time: float


@dataclass(frozen=True)
class StoreItem:
    key: Any
    value: Any
    expiration_time: float
    subkey: Any = None


class DHTNode:
    """One peer of the DHT. Create it with :meth:`create`; stop it with :meth:`shutdown`.

    Expiration times are absolute times on the DHT clock (``node.now()``): wall-clock time
    for real peers, virtual time in simulation.

    A node is assembled from parts with one job each: :class:`Membership` (the routing table
    and how it learns), :class:`PeerCalls` (calling other nodes), :class:`DHTHandlers`
    (answering them), :class:`Maintenance` (periodic upkeep) and :class:`RecordRules` (what
    may be stored). The node itself does lookups, stores and gets.
    """

    def __init__(
        self,
        rpc: RPC,
        *,
        identity: Identity,
        config: DHTConfig,
        clock: Callable[[], float],
        rng: random.Random,
        validators: Iterable[RecordValidator] = (),
    ) -> None:
        self.rpc = rpc
        """This peer's RPC endpoint: expert servers and clients share its port."""
        self.identity = identity
        self.config = config
        self.clock = clock
        self.rng = rng
        self.stats = DHTStats()
        """What this node has seen and done; see :class:`DHTStats`."""
        self.rules = RecordRules(
            ValidatorChain([*validators, SignatureValidator(identity)]),
            max_key_size=config.max_key_size,
            max_value_size=config.max_value_size,
            max_ttl=config.max_ttl,
            max_clock_skew=config.max_clock_skew,
        )
        self.storage = LocalStorage.for_replicas(config)
        """Records this node holds as one of their replicas."""
        self.cache = LocalStorage.for_cache(config)
        """Records copied here by lookups that passed by."""
        self._background = Background()
        self.membership = Membership(
            identity.node_id,
            config=config,
            transport=rpc.transport,
            background=self._background,
            stats=self.stats,
            ping=lambda contact: self.calls.is_alive(contact),
            on_disconnected=self._disconnected,
        )
        self.calls = PeerCalls(
            rpc, identity=identity, config=config, membership=self.membership, stats=self.stats
        )
        DHTHandlers(
            config=config,
            membership=self.membership,
            storage=self.storage,
            cache=self.cache,
            rules=self.rules,
            clock=clock,
            me=self.calls.me,
        ).register(rpc)
        self.maintenance = Maintenance(
            config=config,
            storage=self.storage,
            cache=self.cache,
            routing_table=self.membership.routing_table,
            lookup=lambda targets, k: self._lookup(targets, k=k),
            store_all=self.calls.store_all,
            clock=clock,
            rng=rng,
            spawn=self._background.spawn,
            retry_lost=self.membership.retry_lost,
            stats=self.stats,
        )
        self.membership.on_new_contact = self.maintenance.newcomer
        self._maintenance: asyncio.Task[None] | None = None
        self._initial_peers: list[str] = []
        self._introducers: list[Contact] = []
        self._reconnecting = False

    @classmethod
    async def create(
        cls,
        transport: Transport,
        *,
        initial_peers: Sequence[str] = (),
        identity: Identity | None = None,
        config: DHTConfig | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        client_mode: bool = False,
        validators: Iterable[RecordValidator] = (),
    ) -> DHTNode:
        """Start a node on ``transport`` and join the network through ``initial_peers``.

        With no initial peers the node starts a new network. Raises :class:`BootstrapError`
        if initial peers were given and none answered, ValueError if one is not an endpoint
        the transport can reach. A client-mode node does not listen: it can store and get but
        others never route through it (as behind a NAT). A node that later loses every contact
        goes back to its initial peers by itself (see :attr:`connected`).

        ``clock`` and ``rng`` default to the running loop's world: the wall clock and the
        OS's randomness for real peers, the virtual clock and a seeded stream in simulation.
        Real peers draw their keys from the OS's secure randomness unless ``rng`` is given.
        """
        for peer in initial_peers:
            try:
                transport.check_endpoint(peer)
            except ValueError as error:
                raise ValueError(f"initial peer {peer!r} is not a valid endpoint: {error}") from None
        keys_from = rng if rng is not None or running_world() is None else default_rng("dht-identity")
        identity = identity or Identity.generate(keys_from)
        node = cls(
            RPC(transport),
            identity=identity,
            config=config or DHTConfig(),
            clock=clock or default_clock(),
            rng=rng or default_rng("dht"),
            validators=validators,
        )
        try:
            if not client_mode:
                await node.rpc.serve()
            await node._bootstrap(initial_peers)
        except BaseException:
            await node.shutdown()
            raise
        node._maintenance = asyncio.get_running_loop().create_task(node.maintenance.run())
        return node

    # ---- identity and state ---------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self.identity.node_id

    @property
    def endpoint(self) -> str | None:
        return self.rpc.endpoint

    @property
    def routing_table(self) -> RoutingTable:
        return self.membership.routing_table

    @property
    def connected(self) -> bool:
        """False while no contact this node knows answers (its table emptied, or every contact in
        it failed it recently): then stores return False and gets None. Meanwhile the node asks
        its initial peers again, waiting ``reconnect_delay`` doubling up to
        ``reconnect_max_delay`` between tries; the transition is logged at WARNING and counted
        in ``stats.disconnections``."""
        return self.membership.connected

    async def wait_connected(self) -> None:
        """Return once :attr:`connected` is True (at once if it is)."""
        await self.membership.wait_connected()

    @property
    def contact(self) -> Contact | None:
        endpoint = self.endpoint
        return None if endpoint is None else Contact(self.node_id, endpoint, self.identity.public_key)

    def now(self) -> float:
        """The current time on the DHT clock, in which expiration times are given."""
        return self.clock()

    # ---- public API -----------------------------------------------------------------------

    async def store(self, key: Any, value: Any, expiration_time: float, *, subkey: Any = None) -> bool:
        """Store ``value`` under ``key`` (and ``subkey``) until ``expiration_time``.

        True if at least one of the nearest replicas (this node included) holds it, as found
        by a lookup that converged, so that a lookup from any other node finds it too. Raises
        ValueError for a value or key over the size limits, a record this node may not write,
        or an expiration that is not finite or lies more than ``max_ttl`` ahead of the clock;
        TypeError for a key or subkey that is not a scalar or a tuple of them (a list would
        hash like a tuple of the same items).
        """
        return (await self.store_many([StoreItem(key, value, expiration_time, subkey)]))[0]

    async def store_many(self, items: Sequence[StoreItem]) -> list[bool]:
        """Store many items with one batched lookup; one success flag per item."""
        records = [self._prepare(item) for item in items]
        now = self.now()
        by_id: dict[int, list[int]] = {}
        for index, record in enumerate(records):
            if record.expiration_time > now:
                by_id.setdefault(key_id(record.key), []).append(index)
        stored = [False] * len(records)
        lookups = await self._lookup(list(by_id), k=self.config.replicas)
        plan: dict[int, tuple[Contact, list[int]]] = {}
        for target, indices in by_id.items():
            replicas = lookups[target].nearest[: self.config.replicas]
            for contact in replicas:
                plan.setdefault(contact.node_id, (contact, []))[1].extend(indices)
            if self._should_hold(target, replicas):
                for index in indices:
                    stored[index] |= self.storage.store(target, records[index], now)
        answers = await asyncio.gather(
            *(
                self.calls.store_all(contact, [records[i] for i in indices])
                for contact, indices in plan.values()
            )
        )
        for (_, indices), held in zip(plan.values(), answers, strict=True):
            for index, ok in zip(indices, held, strict=True):
                stored[index] |= ok
        for target, indices in by_id.items():
            if not lookups[target].converged:  # not where a lookup from elsewhere would look
                for index in indices:
                    stored[index] = False
        return stored

    async def get(
        self, key: Any, *, latest: bool = False, timeout: float | None = None
    ) -> ValueWithExpiration | None:
        """The value under ``key``, or None. With ``latest``, ask all nearest nodes for the newest.

        ``timeout`` bounds the call and returns what was found by then; see :meth:`get_many`.
        A dictionary key's value maps each subkey, as written (tuples stay tuples), to its own
        :class:`ValueWithExpiration`.
        """
        return (await self.get_many([key], latest=latest, timeout=timeout))[0]

    async def get_many(
        self, keys: Sequence[Any], *, latest: bool = False, timeout: float | None = None
    ) -> list[ValueWithExpiration | None]:
        """Values for many keys with one batched lookup, in the order of ``keys``.

        ``timeout`` (seconds, default and at most ``lookup_timeout``) bounds the whole call: when
        it passes, what was found so far is returned, never an exception. With ``latest`` that
        is how a caller avoids waiting for a frozen replica to time out. Raises ValueError for a
        timeout that is not positive.
        """
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout}")
        key_bytes = {key_id(kb): kb for kb in (serialize_key(key) for key in keys)}
        now = self.now()
        found: dict[int, LocalStorage] = {}
        pending = []
        for target in key_bytes:
            local = self.storage.get(target, now) or self.cache.get(target, now)
            if local is not None:
                self._merge(found, target, local, now)
            if latest or target not in found:
                pending.append(target)
        holders: dict[int, set[int]] = {}

        def on_found(target: int, contact: Contact, entry: StoredEntry) -> bool:
            if entry.key != key_bytes[target] or not self._merge(found, target, entry, self.now()):
                return False
            holders.setdefault(target, set()).add(contact.node_id)
            return not latest

        lookups = await self._lookup(pending, k=self.config.k, on_found=on_found, timeout=timeout)
        if not latest:
            self._cache_along_path(lookups, found, holders)
        return [self._decode(found.get(key_id(serialize_key(key))), now) for key in keys]

    async def find_nearest(self, target: int, *, k: int | None = None) -> list[Contact]:
        """The ``k`` live nodes nearest to ``target`` (this node excluded), nearest first."""
        return (await self._lookup([target], k=k or self.config.k))[target].nearest

    async def lookup(self, targets: Sequence[int], *, k: int | None = None) -> dict[int, LookupResult]:
        """Full lookup results (nearest nodes, rounds, RPCs) for many targets at once."""
        return await self._lookup(list(targets), k=k or self.config.k)

    async def shutdown(self, *, handoff_timeout: float = 5.0) -> None:
        """Leave the network: hand what this node holds to the current nearest replicas (for at
        most ``handoff_timeout`` seconds; 0 skips it), then stop and close the transport."""
        maintenance, self._maintenance = self._maintenance, None
        if maintenance is not None:
            maintenance.cancel()
            await asyncio.gather(maintenance, return_exceptions=True)
        if handoff_timeout > 0 and maintenance is not None:  # only a node that fully started
            # a goodbye keeps replication up when many peers leave at once: with 5 replicas
            # and 30% of peers leaving, 0.3^5 of keys would otherwise lose every holder
            try:
                async with asyncio.timeout(handoff_timeout):
                    await self.maintenance.republish()
            except (TimeoutError, TransportClosed):
                pass
            except Exception:  # leaving must not fail: the transport is closed whatever happened
                logger.exception("handing records on before leaving failed")
        await self._background.cancel_all()
        await self.rpc.transport.close(grace=0.1)

    # ---- internals ------------------------------------------------------------------------

    async def _bootstrap(self, initial_peers: Sequence[str]) -> None:
        self._initial_peers = list(initial_peers)
        if not initial_peers:
            return
        errors: dict[str, str] = {}
        alive = await self._reach_initial_peers(errors)
        if not alive:
            reasons = "; ".join(
                f"{peer}: {errors.get(peer, f'no answer within {self.config.bootstrap_timeout:g} s')}"
                for peer in initial_peers
            )
            raise BootstrapError(
                f"cannot join the DHT: none of the {len(initial_peers)} initial peers answered ({reasons})"
            )
        await self._join(alive)

    async def _reach_initial_peers(self, errors: dict[str, str]) -> list[Contact]:
        """Ping the initial peers at once; those that answered are now in the routing table."""
        try:
            async with asyncio.timeout(self.config.bootstrap_timeout):
                answers = await asyncio.gather(
                    *(self.calls.ping(peer, errors=errors) for peer in self._initial_peers)
                )
        except TimeoutError:
            answers = []
        alive = [contact for contact in answers if contact is not None]
        for contact in alive:
            self.membership.seen(contact)
        return alive

    async def _join(self, introducers: list[Contact]) -> None:
        """Announce ourselves to our nearest peers and fill our table: one lookup of our own id.

        Far ranges of distance fill as we look things up there: see :meth:`_ask_introducer`.
        """
        self._introducers = introducers
        await self.find_nearest(self.node_id)

    def _disconnected(self) -> None:
        if not self._initial_peers:
            logger.warning(
                "DHT node %x has no initial peers to go back to; it waits to be contacted", self.node_id
            )
        elif not self._reconnecting:
            self._reconnecting = True
            self._background.spawn(self._reconnect())

    async def _reconnect(self) -> None:
        """Ask the initial peers again until one answers: at once, then with jittered backoff."""
        delay = 0.0
        try:
            while not self.connected:
                if delay > 0:
                    await asyncio.sleep(delay * self.rng.uniform(0.5, 1.5))
                    if self.connected:  # someone contacted us meanwhile
                        break
                self.stats.reconnect_attempts += 1
                alive = await self._reach_initial_peers({})
                if alive:
                    logger.info("DHT node %x reached its initial peers again; rejoining", self.node_id)
                    await self._join(alive)
                    break
                delay = min(max(2 * delay, self.config.reconnect_delay), self.config.reconnect_max_delay)
        finally:
            self._reconnecting = False

    async def _lookup(
        self,
        targets: list[int],
        *,
        k: int,
        on_found: Callable[[int, Contact, Any], bool] | None = None,
        timeout: float | None = None,
    ) -> dict[int, LookupResult]:
        if not targets:
            return {}
        table = self.routing_table
        loop = asyncio.get_running_loop()
        return await traverse(
            targets,
            {target: table.nearest(target, k) for target in targets},
            also_ask=self._ask_introducer(targets),
            ask=self._ask,
            k=k,
            alpha=self.config.alpha,
            max_rpcs=self.config.max_lookup_rpcs,
            straggler_delay=self.config.straggler_delay,
            on_found=on_found,
            exclude=self.node_id,
            deadline=loop.time() + min(self.config.lookup_timeout, timeout or self.config.lookup_timeout),
            skip=self.membership.skip(),
            on_unanswered=self.membership.unresponsive,
            on_bad_referrer=self.membership.failed,
        )

    def _ask_introducer(self, targets: list[int]) -> dict[int, list[Contact]]:
        """Targets at a distance where we have never met anyone, and who to ask about them too.

        Peers that join at once through one initial peer only meet their own neighbourhood
        (a flash crowd of 300 left acknowledged stores unreadable): a lookup for a far target
        then converges among the nearest nodes *we* know, half the id space from the real ones,
        because the nodes we know know nobody there either. The peer that introduced us knows
        every part of the network, so such a lookup asks it too, in its first round (no extra
        round trip). Once anyone from that range has answered us the range is known and this
        costs nothing more: in steady growth, or after churn, the ranges a node has met stay
        met. Kademlia's join instead refreshes every bucket farther than the closest neighbour
        (~8x the messages of a join, measured), whether or not the node ever looks there.
        """
        introducer = next(
            (c for c in self._introducers if not self.membership.is_unresponsive(c.node_id)), None
        )
        if introducer is None:
            return {}
        seen = self.membership.ranges_seen
        unknown = [t for t in targets if not (seen >> (t ^ self.node_id).bit_length()) & 1]
        if not unknown:
            return {}
        neighbour = self.routing_table.nearest(self.node_id, 1)
        nearest = (neighbour[0].node_id ^ self.node_id).bit_length() if neighbour else 0
        # nobody is nearer to us than our closest neighbour: those targets are ours to find
        return {t: [introducer] for t in unknown if (t ^ self.node_id).bit_length() > nearest}

    async def _ask(self, contact: Contact, targets: list[int]) -> dict[int, tuple[list[Contact], Any]] | None:
        results: list[dict[int, FindResult]] = []
        for start in range(0, len(targets), self.config.max_batch):
            batch = targets[start : start + self.config.max_batch]
            while batch:  # entries left out to keep an answer small are asked for again
                answer = await self.calls.find(contact, batch)
                if answer is None:
                    return None
                results.append(answer)
                left_out = [target for target, r in answer.items() if r.left_out]
                if len(left_out) == len(batch):  # not one fitted: ask no more
                    break
                batch = left_out
        return {target: (r.nearest, r.entry) for answer in results for target, r in answer.items()}

    def _prepare(self, item: StoreItem) -> DHTRecord:
        """The signed record for ``item``; raises TypeError or ValueError naming what is wrong."""
        key = serialize_key(item.key)
        subkey = None if item.subkey is None else serialize_key(item.subkey)
        expiration = item.expiration_time
        if isinstance(expiration, bool) or not isinstance(expiration, numbers.Real):
            raise TypeError(f"expiration_time must be a number, got {type(expiration).__name__}")
        try:
            value = msgpack.packb(item.value, use_bin_type=True)
            msgpack.unpackb(value, raw=False)  # what could not be read back must not be stored
        except (TypeError, ValueError, OverflowError) as error:
            raise TypeError(f"cannot store a value msgpack cannot encode and decode: {error}") from None
        try:
            expiration = float(expiration)
        except OverflowError:
            expiration = math.inf  # an integer beyond any float: refused below as not finite
        now = self.now()
        problem = self.rules.expiration_problem(expiration, now, own=True)
        if problem is not None:
            raise ValueError(f"cannot store under {item.key!r}: {problem}")
        record = self.rules.sign(DHTRecord(key, subkey, value, expiration))
        reason = self.rules.check(record, now, own=True)
        if reason is not None:
            raise ValueError(f"cannot store under {item.key!r}: {reason}")
        return record

    def _should_hold(self, target: int, replicas: list[Contact]) -> bool:
        """Whether this node is itself among the nearest replicas of ``target``."""
        if self.endpoint is None:
            return False
        if len(replicas) < self.config.replicas:
            return True
        return self.node_id ^ target < replicas[-1].node_id ^ target

    def _merge(self, found: dict[int, LocalStorage], target: int, entry: StoredEntry, now: float) -> bool:
        """Add the valid records of ``entry`` to what we found for ``target``; True if any.

        Only the first ``max_subkeys`` records are looked at: no honest node holds more, and
        checking millions of tiny records from one lying answer would stall the loop.
        """
        if key_id(entry.key) != target:
            return False
        merged = found.get(target)
        accepted = False
        for record in itertools.islice(entry.records(), self.config.max_subkeys):
            if self.rules.check(record, now) is not None:
                continue
            if merged is None:  # bounded like a replica, so a lying answer cannot grow it further
                merged = found[target] = LocalStorage.for_replicas(self.config)
            accepted |= merged.store(target, record, now)
        return accepted

    def _decode(self, merged: LocalStorage | None, now: float) -> ValueWithExpiration | None:
        """The user's view of what was found. A value that cannot be decoded is dropped, counted
        and logged; under a dictionary key only that subkey goes, so one bad writer cannot hide
        what everyone else announced there."""
        if merged is None:
            return None
        decoded: dict[Any, ValueWithExpiration] = {}
        for _, entry in merged.items(now):
            for record in entry.records():
                try:
                    value = msgpack.unpackb(self.rules.strip(record), raw=False)
                except Exception as error:
                    self.stats.undecodable_values += 1
                    logger.warning("dropping a value under %r that cannot be decoded: %s", record.key, error)
                    continue
                decoded[_unpack_key(record.subkey)] = ValueWithExpiration(value, record.expiration_time)
        if not decoded:
            return None
        if None in decoded:
            return decoded[None]
        return ValueWithExpiration(decoded, max(item.expiration_time for item in decoded.values()))

    def _cache_along_path(
        self, lookups: dict[int, LookupResult], found: dict[int, LocalStorage], holders: dict[int, set[int]]
    ) -> None:
        """Store found values on the nearest node that answered without having them."""
        now = self.now()
        plan: dict[int, tuple[Contact, list[tuple[DHTRecord, bool]]]] = {}
        for target, result in lookups.items():
            merged = found.get(target)
            if merged is None or target not in holders:
                continue
            closest_without = next((c for c in result.nearest if c.node_id not in holders[target]), None)
            if closest_without is None:
                continue
            for _, entry in merged.items(now):
                records = [(record, True) for record in entry.records()]
                plan.setdefault(closest_without.node_id, (closest_without, []))[1].extend(records)
        for contact, records in plan.values():
            self._background.spawn(self.calls.store(contact, records[: self.config.max_batch]))


def _unpack_key(subkey: bytes | None) -> Any:
    """A subkey as it was written (sequences as tuples); stored subkeys passed ``RecordRules``."""
    return None if subkey is None else deserialize_key(subkey)
