"""DHTNode: the asynchronous face of the DHT (store, get, find_nearest, shutdown)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..net import RPC, Transport, TransportClosed
from ..world import default_clock, default_rng, running_world
from .background import Background
from .calls import PeerCalls
from .config import DHTConfig
from .handlers import DHTHandlers
from .identity import Identity
from .joining import BootstrapError, Joining
from .lookups import Lookups
from .maintenance import Maintenance
from .membership import Membership
from .reads import Reads, ValueWithExpiration
from .routing import Contact, RoutingTable
from .stats import DHTStats
from .storage import LocalStorage
from .traverse import LookupResult
from .validation import RecordRules, RecordValidator, SignatureValidator, ValidatorChain
from .writes import StoreItem, Writes

__all__ = ["BootstrapError", "DHTNode", "StoreItem", "ValueWithExpiration"]

logger = logging.getLogger(__name__)


class DHTNode:
    """One peer of the DHT. Create it with :meth:`create`; stop it with :meth:`shutdown`.

    Expiration times are absolute times on the DHT clock (``node.now()``): wall-clock time
    for real peers, virtual time in simulation.

    A node is assembled from parts with one job each: :class:`Membership` (the routing table
    and how it learns), :class:`Joining` (entering the network, and going back after losing
    it), :class:`PeerCalls` (calling other nodes), :class:`DHTHandlers` (answering them),
    :class:`Lookups`, :class:`Writes` and :class:`Reads` (what the public methods do),
    :class:`Maintenance` (periodic upkeep) and :class:`RecordRules` (what may be stored).
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
            on_disconnected=lambda: self.joining.disconnected(),
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
        self.joining = Joining(
            identity.node_id,
            config=config,
            calls=self.calls,
            membership=self.membership,
            stats=self.stats,
            rng=rng,
            background=self._background,
            find_self=lambda: self.find_nearest(self.node_id),
        )
        self.lookups = Lookups(
            identity.node_id,
            config=config,
            membership=self.membership,
            calls=self.calls,
            also_ask=self.joining.also_ask,
        )
        self.writes = Writes(
            identity.node_id,
            config=config,
            rules=self.rules,
            storage=self.storage,
            lookups=self.lookups,
            calls=self.calls,
            clock=clock,
            listening=lambda: self.endpoint is not None,
        )
        self.reads = Reads(
            config=config,
            rules=self.rules,
            storage=self.storage,
            cache=self.cache,
            lookups=self.lookups,
            calls=self.calls,
            clock=clock,
            background=self._background,
            stats=self.stats,
        )
        self.maintenance = Maintenance(
            config=config,
            storage=self.storage,
            cache=self.cache,
            routing_table=self.membership.routing_table,
            lookup=lambda targets, k: self.lookups.run(targets, k=k),
            store_all=self.calls.store_all,
            clock=clock,
            rng=rng,
            spawn=self._background.spawn,
            retry_lost=self.membership.retry_lost,
            stats=self.stats,
        )
        self.membership.on_new_contact = self.maintenance.newcomer
        self._maintenance: asyncio.Task[None] | None = None

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
            await node.joining.bootstrap(initial_peers)
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
        return await self.writes.store_many(items)

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
        return await self.reads.get_many(keys, latest=latest, timeout=timeout)

    async def find_nearest(self, target: int, *, k: int | None = None) -> list[Contact]:
        """The ``k`` live nodes nearest to ``target`` (this node excluded), nearest first."""
        return (await self.lookups.run([target], k=k or self.config.k))[target].nearest

    async def lookup(self, targets: Sequence[int], *, k: int | None = None) -> dict[int, LookupResult]:
        """Full lookup results (nearest nodes, rounds, RPCs) for many targets at once."""
        return await self.lookups.run(list(targets), k=k or self.config.k)

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
