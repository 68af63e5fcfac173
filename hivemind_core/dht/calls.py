"""Calling other nodes: dht.ping, dht.store and dht.find, and what their answers teach us.

Every failure of one peer ends as ``None`` (with the reason logged, or put in ``errors``) and
never as an exception, so one dead, slow or lying contact costs a lookup one answer, never the
whole lookup. Each RPC waits as long as that peer's measured round trips suggest
(:class:`RoundTrips`), so a lost message to a fast peer costs a second, not ``rpc_timeout``. A
peer that does not answer in time is forgotten (and skipped by lookups for a
while, see :class:`Membership`); a malformed answer is treated the same way. Every request and
every failure is counted in :class:`DHTStats`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..net import RPC, ProtocolError, RemoteError, RequestTimeout, TransportClosed, TransportError
from .codec import (
    decode_contact,
    decode_entry,
    decode_node,
    encode_node,
    encode_record,
    require,
)
from .config import DHTConfig
from .identity import Identity
from .ids import id_to_bytes, node_id_for
from .membership import Membership
from .routing import Contact, canonical
from .rtt import RoundTrips
from .stats import DHTStats
from .storage import DHTRecord, StoredEntry

logger = logging.getLogger(__name__)

MAX_DECODED_CONTACTS = 1 << 16
DECODED_CONTACTS: dict[tuple[Any, ...], Contact] = {}
"""What a (public key, endpoint) pair from an answer decodes to, for one kind of transport's
endpoint check (its class's ``check_endpoint``, which depends on nothing else): the same for
every node of a process, so each is decoded and checked once for all of them, not once per node
(a cache per node held half of a simulated peer's memory; decoding anew each time cost 13% of a
simulation's instructions). The oldest are forgotten first; ~10 MB when full."""

ROUND_TRIP_BYTES = 16 * 1024
"""A store carrying more bytes of records takes as long as the link's bandwidth makes it, which
round trips do not predict: it waits ``rpc_timeout`` and its time is not a round-trip sample."""


@dataclass(frozen=True, slots=True)
class FindResult:
    """What one node said about one looked-up id."""

    nearest: list[Contact]
    entry: StoredEntry | None
    left_out: bool = False
    """The node holds an entry but left it out to keep its answer within its byte budget."""


class PeerCalls:
    """This node's side of the DHT RPCs; see the module docstring."""

    def __init__(
        self,
        rpc: RPC,
        *,
        identity: Identity,
        config: DHTConfig,
        membership: Membership,
        stats: DHTStats,
    ) -> None:
        self.rpc = rpc
        self.identity = identity
        self.config = config
        self.membership = membership
        self.stats = stats
        self._me: list[Any] | None = None
        self.round_trips = RoundTrips(
            capacity=config.rtt_contacts,
            min_timeout=min(config.min_rpc_timeout, config.rpc_timeout),
            max_timeout=config.rpc_timeout,
        )
        """Measured round trips per endpoint: each RPC's timeout, and when a lookup stops waiting."""

    def me(self) -> list[Any]:
        """This node as it introduces itself on the wire."""
        endpoint = self.rpc.endpoint
        if self._me is None or self._me[1] != endpoint:
            self._me = encode_node(self.identity.public_key, endpoint)
        return self._me

    async def ping(self, endpoint: str, *, errors: dict[str, str] | None = None) -> Contact | None:
        """The contact answering at ``endpoint``, or None (with the reason put in ``errors``)."""
        response = await self._call(endpoint, "dht.ping", [self.me()], errors=errors)
        if response is None:
            return None
        try:
            require(isinstance(response, list) and len(response) == 1, "ping response must be [responder]")
            public_key, announced = decode_node(response[0], "responder")
        except ValueError as error:
            self.stats.rpc_failures += 1
            logger.warning("bad ping response from %s: %s", endpoint, error)
            if errors is not None:
                errors[endpoint] = f"bad ping response: {error}"
            return None
        contact = Contact(node_id_for(public_key), endpoint, public_key)
        if announced is not None:
            self.membership.seen(contact)
        return contact

    async def is_alive(self, contact: Contact) -> bool:
        """Whether ``contact`` still answers as the same node."""
        answered = await self.ping(contact.endpoint)
        return answered is not None and answered.node_id == contact.node_id

    async def store(self, contact: Contact, records: Sequence[tuple[DHTRecord, bool]]) -> list[bool] | None:
        """Ask ``contact`` to store records (each with its is_cache flag); None if it failed."""
        body = [self.me(), [encode_record(record, is_cache) for record, is_cache in records]]
        size = sum(len(r.key) + len(r.subkey or b"") + len(r.value) for r, _ in records)
        response = await self._call(
            contact.endpoint, "dht.store", body, contact, round_trip=size <= ROUND_TRIP_BYTES
        )
        if response is None:
            return None
        try:
            require(
                isinstance(response, list) and len(response) == 2,
                "store response must be [responder, results]",
            )
            self._check_responder(contact, response[0])
            results = response[1]
            require(isinstance(results, list) and len(results) == len(records), "one result per record")
            stored = []
            for result in results:
                require(
                    isinstance(result, list) and len(result) == 2 and isinstance(result[0], bool),
                    "each result must be [stored, reason]",
                )
                if not result[0] and result[1]:
                    logger.debug("%s refused a record: %s", contact.endpoint, result[1])
                stored.append(result[0])
            return stored
        except ValueError as error:
            self.stats.rpc_failures += 1
            logger.warning("bad store response from %s: %s", contact.endpoint, error)
            self.membership.failed(contact)
            return None

    async def store_all(self, contact: Contact, records: Sequence[DHTRecord]) -> list[bool]:
        """Store ``records`` on ``contact`` in batches; one flag per record (False if it failed)."""
        stored = [False] * len(records)
        for start in range(0, len(records), self.config.max_batch):
            chunk = records[start : start + self.config.max_batch]
            result = await self.store(contact, [(record, False) for record in chunk])
            if result is None:
                break
            stored[start : start + len(chunk)] = result
        return stored

    async def find(self, contact: Contact, targets: Sequence[int]) -> dict[int, FindResult] | None:
        """What ``contact`` knows about each target id; None if it failed."""
        body = [self.me(), [id_to_bytes(t) for t in targets], self.config.k]
        response = await self._call(contact.endpoint, "dht.find", body, contact)
        if response is None:
            return None
        try:
            require(
                isinstance(response, list) and len(response) == 3,
                "find response must be [responder, contacts, results]",
            )
            self._check_responder(contact, response[0])
            raw_contacts, raw_results = response[1], response[2]
            require(
                isinstance(raw_contacts, list)
                and isinstance(raw_results, list)
                and len(raw_results) == len(targets),
                "find response has the wrong shape",
            )
            k = self.config.k
            # lengths are checked on the raw answer before any item is decoded: a peer answering
            # with 300,000 contacts made every lookup through it decode them all on the loop
            if len(raw_contacts) > k * len(targets):
                raise ValueError(f"{len(raw_contacts)} contacts for {len(targets)} ids; at most {k} each")
            for i, raw in enumerate(raw_results):
                # messages are formatted only on failure: this loop runs for every target of every answer
                if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[1], list)):
                    raise ValueError(f"results[{i}] must be [entry, indices]")
                if len(raw[1]) > k:
                    raise ValueError(f"results[{i}] names {len(raw[1])} contacts; {k} were asked for")
            contacts = self._contacts_or_none(raw_contacts, contact)
            count = len(contacts)
            found: dict[int, FindResult] = {}
            for i, (target, raw) in enumerate(zip(targets, raw_results, strict=True)):
                if not all(isinstance(j, int) and 0 <= j < count for j in raw[1]):
                    raise ValueError(f"results[{i}] has a contact index out of range")
                entry = None
                if raw[0] is not None and raw[0] is not False:
                    entry = decode_entry(raw[0], f"results[{i}].entry", first_subkeys=self.config.max_subkeys)
                nearest = [c for c in (contacts[j] for j in raw[1]) if c is not None]
                found[target] = FindResult(nearest, entry, raw[0] is False)
            return found
        except ValueError as error:
            self.stats.rpc_failures += 1
            logger.warning("bad find response from %s: %s", contact.endpoint, error)
            self.membership.failed(contact)
            return None

    def patience(self, contact: Contact) -> tuple[float, float] | None:
        """When a lookup's request to ``contact`` is late, and when it gives up on it; see
        :meth:`RoundTrips.patience`."""
        return self.round_trips.patience(contact.endpoint)

    async def _call(
        self,
        endpoint: str,
        method: str,
        body: Any,
        contact: Contact | None = None,
        *,
        errors: dict[str, str] | None = None,
        round_trip: bool = True,
    ) -> Any:
        """``method``'s answer, or None. With ``round_trip`` (a small request), it waits as the
        endpoint's round trips suggest and its own round trip is measured."""
        self.stats.rpcs += 1
        round_trips = self.round_trips
        timeout = round_trips.timeout(endpoint) if round_trip else self.config.rpc_timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            self.rpc.transport.check_endpoint(endpoint)
            answer = await self.rpc.call(endpoint, method, body, timeout=timeout)
            if round_trip:
                round_trips.observe(endpoint, loop.time() - started)
            return answer
        except asyncio.CancelledError:
            # a lookup that stopped waiting for a late answer cancels it: its round trip is at
            # least this long, so say so, or the estimate would hear only of the fast answers
            expected = round_trips.expected(endpoint)
            if round_trip and expected is not None and loop.time() - started >= expected:
                round_trips.observe(endpoint, loop.time() - started)
            raise
        except (TransportError, ValueError) as error:  # ValueError: an endpoint we cannot dial
            logger.debug("%s to %s failed: %s", method, endpoint, error)
            if isinstance(error, RequestTimeout):
                round_trips.timed_out(endpoint)
            if contact is not None and not isinstance(error, TransportClosed):  # closed: our side
                self.membership.failed(contact)
            failure = str(error)
        except (RemoteError, ProtocolError) as error:
            logger.warning("%s to %s was rejected: %s", method, endpoint, error)
            failure = str(error)
        self.stats.rpc_failures += 1
        if errors is not None:
            errors[endpoint] = failure
        return None

    def _contacts_or_none(self, raws: list[Any], source: Contact) -> list[Contact | None]:
        """The contacts of a find answer; one we could never dial is None: skipped, not believed.

        Answers repeat the same contacts over and over, to every node, so what a contact
        decodes to is remembered once per process (``DECODED_CONTACTS``, keyed by the
        transport's endpoint check too), and the contact returned is the shared copy routing
        tables hold (``routing.canonical``).
        """
        check = self.rpc.transport.check_endpoint
        kind = getattr(check, "__func__", check)
        contacts: list[Contact | None] = []
        for raw in raws:
            key = None
            try:
                key = (kind, *raw)
                contacts.append(DECODED_CONTACTS[key])
                continue
            except (KeyError, TypeError):  # new, or not even a hashable pair
                pass
            try:
                contact = canonical(decode_contact(raw, "contact", check))
            except ValueError as error:
                logger.debug("%s sent an unusable contact %r: %s", source.endpoint, raw, error)
                contacts.append(None)
                continue
            if key is not None:  # None: raw was not even a pair, so it cannot have decoded
                DECODED_CONTACTS[key] = contact
                if len(DECODED_CONTACTS) > MAX_DECODED_CONTACTS:
                    DECODED_CONTACTS.pop(next(iter(DECODED_CONTACTS)), None)  # the oldest
            contacts.append(contact)
        return contacts

    def _check_responder(self, contact: Contact, raw: Any) -> None:
        public_key, _ = decode_node(raw, "responder")
        if public_key != contact.public_key:
            raise ValueError(f"{contact.endpoint} is now a different node")
        self.membership.seen(contact)
