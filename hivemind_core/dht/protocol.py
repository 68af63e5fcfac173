"""The DHT's RPCs (ping, store, find), their wire format, and routing-table upkeep.

Every request starts with the sender's ``[public_key, endpoint]`` (endpoint nil in client
mode) and every response with the responder's, so each exchange teaches both sides about
each other. Bodies are compact msgpack arrays:

* ``dht.ping``  ``[sender]`` -> ``[responder]``
* ``dht.store`` ``[sender, [[key, subkey|nil, value, expiration, is_cache], ...]]``
  -> ``[responder, [[stored, reason|nil], ...]]``
* ``dht.find``  ``[sender, [id, ...], count]``
  -> ``[responder, [contact, ...], [[entry|nil, [contact index, ...]], ...]]`` where an entry
  is ``[key, value|nil, expiration, [[subkey, value, expiration], ...]|nil]``

Malformed bodies are answered with an error naming the field at fault; the node keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..net import RPC, ProtocolError, RemoteError, TransportError
from .config import DHTConfig
from .identity import PUBLIC_KEY_BYTES, Identity
from .ids import ID_BYTES, id_from_bytes, id_to_bytes, key_id, node_id_for
from .routing import Contact, RoutingTable
from .storage import DHTRecord, LocalStorage, StoredEntry
from .validation import ValidatorChain

logger = logging.getLogger(__name__)

MAX_ENDPOINT_LENGTH = 256


@dataclass(frozen=True, slots=True)
class FindResult:
    """What one node said about one looked-up id."""

    nearest: list[Contact]
    entry: StoredEntry | None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _host(endpoint: str) -> str:
    return endpoint.rpartition(":")[0] or endpoint


def encode_node(public_key: bytes, endpoint: str | None) -> list[Any]:
    return [public_key, endpoint]


def decode_node(raw: Any, where: str) -> tuple[bytes, str | None]:
    _require(isinstance(raw, list) and len(raw) == 2, f"{where} must be [public_key, endpoint]")
    public_key, endpoint = raw
    _require(
        isinstance(public_key, bytes) and len(public_key) == PUBLIC_KEY_BYTES,
        f"{where}: public key must be {PUBLIC_KEY_BYTES} bytes",
    )
    _require(
        endpoint is None or (isinstance(endpoint, str) and 0 < len(endpoint) <= MAX_ENDPOINT_LENGTH),
        f"{where}: endpoint must be nil or a string of at most {MAX_ENDPOINT_LENGTH} characters",
    )
    return public_key, endpoint


_contacts: dict[tuple[bytes, str], Contact] = {}
_CONTACT_CACHE_SIZE = 1 << 16


def decode_contact(raw: Any, where: str) -> Contact:
    """A contact from the wire; decoded contacts are shared, as the same ones recur constantly."""
    try:
        cached = _contacts.get((raw[0], raw[1]))
    except (TypeError, IndexError, KeyError):
        cached = None
    if cached is not None and len(raw) == 2:
        return cached
    public_key, endpoint = decode_node(raw, where)
    _require(endpoint is not None, f"{where}: a contact needs an endpoint")
    assert endpoint is not None
    contact = Contact(node_id_for(public_key), endpoint, public_key)
    if len(_contacts) >= _CONTACT_CACHE_SIZE:
        _contacts.clear()
    _contacts[public_key, endpoint] = contact
    return contact


def _is_expiration(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value)


def encode_entry(entry: StoredEntry) -> list[Any]:
    subkeys = None
    if entry.subkeys is not None:
        subkeys = [[subkey, value, expiration] for subkey, (value, expiration) in entry.subkeys.items()]
    return [entry.key, entry.value, entry.expiration_time, subkeys]


def decode_entry(raw: Any, where: str) -> StoredEntry:
    _require(isinstance(raw, list) and len(raw) == 4, f"{where} must be [key, value, expiration, subkeys]")
    key, value, expiration, subkeys = raw
    _require(isinstance(key, bytes), f"{where}: key must be bytes")
    _require(_is_expiration(expiration), f"{where}: expiration must be a finite number")
    if subkeys is None:
        _require(isinstance(value, bytes), f"{where}: value must be bytes")
        return StoredEntry(key, value, float(expiration))
    _require(isinstance(subkeys, list), f"{where}: subkeys must be a list")
    parsed: dict[bytes, tuple[bytes, float]] = {}
    for i, item in enumerate(subkeys):
        _require(
            isinstance(item, list) and len(item) == 3, f"{where}.subkeys[{i}] must be [subkey, value, exp]"
        )
        subkey, subvalue, subexpiration = item
        _require(
            isinstance(subkey, bytes) and isinstance(subvalue, bytes) and _is_expiration(subexpiration),
            f"{where}.subkeys[{i}] must be [bytes, bytes, number]",
        )
        parsed[subkey] = (subvalue, float(subexpiration))
    return StoredEntry(key, None, float(expiration), parsed)


class DHTProtocol:
    """Serves DHT RPCs and makes them, keeping the routing table and storage up to date."""

    def __init__(
        self,
        rpc: RPC,
        *,
        identity: Identity,
        config: DHTConfig,
        clock: Callable[[], float],
        validators: ValidatorChain,
    ) -> None:
        self.rpc = rpc
        self.identity = identity
        self.config = config
        self.clock = clock
        self.validators = validators
        self.routing_table = RoutingTable(identity.node_id, k=config.k, max_per_subnet=config.max_per_subnet)
        self.storage = LocalStorage()
        self.cache = LocalStorage(capacity=config.cache_capacity)
        self._background: set[asyncio.Task[None]] = set()
        self._pinging: set[int] = set()
        self._my_info: list[Any] | None = None
        for name, method in (
            ("dht.ping", self._rpc_ping),
            ("dht.store", self._rpc_store),
            ("dht.find", self._rpc_find),
        ):
            rpc.register(name, method)

    @property
    def node_id(self) -> int:
        return self.identity.node_id

    @property
    def endpoint(self) -> str | None:
        return self.rpc.endpoint

    def _me(self) -> list[Any]:
        endpoint = self.endpoint
        if self._my_info is None or self._my_info[1] != endpoint:
            self._my_info = encode_node(self.identity.public_key, endpoint)
        return self._my_info

    # ---- serving --------------------------------------------------------------------------

    async def _rpc_ping(self, peer: str, body: Any) -> Any:
        _require(isinstance(body, list) and len(body) == 1, "ping body must be [sender]")
        self._observe(peer, body[0])
        return [self._me()]

    async def _rpc_store(self, peer: str, body: Any) -> Any:
        _require(isinstance(body, list) and len(body) == 2, "store body must be [sender, records]")
        sender, records = body
        _require(isinstance(records, list), "store records must be a list")
        _require(
            len(records) <= self.config.max_batch,
            f"store carries {len(records)} records; the limit is {self.config.max_batch}",
        )
        self._observe(peer, sender)
        now = self.clock()
        results = []
        for i, raw in enumerate(records):
            _require(
                isinstance(raw, list) and len(raw) == 5,
                f"records[{i}] must be [key, subkey, value, expiration, is_cache]",
            )
            key, subkey, value, expiration, is_cache = raw
            _require(
                isinstance(key, bytes)
                and (subkey is None or isinstance(subkey, bytes))
                and isinstance(value, bytes)
                and _is_expiration(expiration)
                and isinstance(is_cache, bool),
                f"records[{i}] must be [bytes, bytes|nil, bytes, number, bool]",
            )
            record = DHTRecord(key, subkey, value, float(expiration))
            reason = self.check_record(record)
            if reason is not None:
                results.append([False, reason])
                continue
            storage = self.cache if is_cache else self.storage
            stored = storage.store(key_id(key), record, now)
            results.append([stored, None if stored else "expired, or older than the value held"])
        return [self._me(), results]

    async def _rpc_find(self, peer: str, body: Any) -> Any:
        _require(isinstance(body, list) and len(body) == 3, "find body must be [sender, ids, count]")
        sender, raw_ids, count = body
        _require(
            isinstance(raw_ids, list) and len(raw_ids) <= self.config.max_batch,
            f"find ids must be a list of at most {self.config.max_batch}",
        )
        _require(
            isinstance(count, int) and 0 < count <= self.config.k, f"find count must be in 1..{self.config.k}"
        )
        ids = []
        for i, raw in enumerate(raw_ids):
            _require(isinstance(raw, bytes) and len(raw) == ID_BYTES, f"ids[{i}] must be {ID_BYTES} bytes")
            ids.append(id_from_bytes(raw))
        sender_id = self._observe(peer, sender)
        now = self.clock()
        contacts: list[list[Any]] = []
        index_of: dict[int, int] = {}
        results = []
        for target in ids:
            indices = []
            for contact in self.routing_table.nearest(target, count, exclude=sender_id):
                if contact.node_id not in index_of:
                    index_of[contact.node_id] = len(contacts)
                    contacts.append(encode_node(contact.public_key, contact.endpoint))
                indices.append(index_of[contact.node_id])
            entry = self.storage.get(target, now) or self.cache.get(target, now)
            results.append([encode_entry(entry) if entry is not None else None, indices])
        return [self._me(), contacts, results]

    def check_record(self, record: DHTRecord) -> str | None:
        """Why a record may not be stored here, or None if it may."""
        for part, name in ((record.key, "key"), (record.subkey, "subkey")):
            if part is not None and len(part) > self.config.max_key_size:
                return f"{name} of {len(part)} bytes exceeds the {self.config.max_key_size}-byte limit"
        if len(record.value) > self.config.max_value_size:
            return f"value of {len(record.value)} bytes exceeds the {self.config.max_value_size}-byte limit"
        return self.validators.validate(record)

    # ---- calling --------------------------------------------------------------------------

    async def ping(self, endpoint: str, *, errors: dict[str, str] | None = None) -> Contact | None:
        """The contact answering at ``endpoint``, or None (with the reason put in ``errors``)."""
        response = await self._call(endpoint, "dht.ping", [self._me()], errors=errors)
        if response is None:
            return None
        try:
            _require(isinstance(response, list) and len(response) == 1, "ping response must be [responder]")
            return self._responder(endpoint, response[0])
        except ValueError as error:
            logger.warning("bad ping response from %s: %s", endpoint, error)
            if errors is not None:
                errors[endpoint] = f"bad ping response: {error}"
            return None

    async def store(self, contact: Contact, records: Sequence[tuple[DHTRecord, bool]]) -> list[bool] | None:
        """Ask ``contact`` to store records (each with its is_cache flag); None if it failed."""
        body = [self._me(), [[r.key, r.subkey, r.value, r.expiration_time, cache] for r, cache in records]]
        response = await self._call(contact.endpoint, "dht.store", body, contact)
        if response is None:
            return None
        try:
            _require(
                isinstance(response, list) and len(response) == 2,
                "store response must be [responder, results]",
            )
            self._check_responder(contact, response[0])
            results = response[1]
            _require(isinstance(results, list) and len(results) == len(records), "one result per record")
            stored = []
            for result in results:
                _require(
                    isinstance(result, list) and len(result) == 2 and isinstance(result[0], bool),
                    "each result must be [stored, reason]",
                )
                if not result[0] and result[1]:
                    logger.debug("%s refused a record: %s", contact.endpoint, result[1])
                stored.append(result[0])
            return stored
        except ValueError as error:
            logger.warning("bad store response from %s: %s", contact.endpoint, error)
            return None

    async def find(self, contact: Contact, targets: Sequence[int]) -> dict[int, FindResult] | None:
        """What ``contact`` knows about each target id; None if it failed."""
        body = [self._me(), [id_to_bytes(t) for t in targets], self.config.k]
        response = await self._call(contact.endpoint, "dht.find", body, contact)
        if response is None:
            return None
        try:
            _require(
                isinstance(response, list) and len(response) == 3,
                "find response must be [responder, contacts, results]",
            )
            self._check_responder(contact, response[0])
            raw_contacts, raw_results = response[1], response[2]
            _require(
                isinstance(raw_contacts, list)
                and isinstance(raw_results, list)
                and len(raw_results) == len(targets),
                "find response has the wrong shape",
            )
            contacts = [decode_contact(raw, f"contacts[{i}]") for i, raw in enumerate(raw_contacts)]
            found: dict[int, FindResult] = {}
            for i, (target, raw) in enumerate(zip(targets, raw_results, strict=True)):
                _require(
                    isinstance(raw, list) and len(raw) == 2 and isinstance(raw[1], list),
                    f"results[{i}] must be [entry, indices]",
                )
                _require(
                    all(isinstance(j, int) and 0 <= j < len(contacts) for j in raw[1]),
                    f"results[{i}] has a contact index out of range",
                )
                entry = None if raw[0] is None else decode_entry(raw[0], f"results[{i}].entry")
                found[target] = FindResult([contacts[j] for j in raw[1]], entry)
            return found
        except ValueError as error:
            logger.warning("bad find response from %s: %s", contact.endpoint, error)
            self.routing_table.remove(contact.node_id)
            return None

    async def _call(
        self,
        endpoint: str,
        method: str,
        body: Any,
        contact: Contact | None = None,
        *,
        errors: dict[str, str] | None = None,
    ) -> Any:
        try:
            return await self.rpc.call(endpoint, method, body, timeout=self.config.rpc_timeout)
        except TransportError as error:
            logger.debug("%s to %s failed: %s", method, endpoint, error)
            if contact is not None:
                self.routing_table.remove(contact.node_id)
            failure = str(error)
        except (RemoteError, ProtocolError) as error:
            logger.warning("%s to %s was rejected: %s", method, endpoint, error)
            failure = str(error)
        if errors is not None:
            errors[endpoint] = failure
        return None

    # ---- routing-table upkeep -------------------------------------------------------------

    def _observe(self, peer: str, raw_sender: Any) -> int | None:
        """Learn about a requester; returns its node id. Client-mode peers are not added."""
        public_key, endpoint = decode_node(raw_sender, "sender")
        node_id = node_id_for(public_key)
        if endpoint is not None and _host(endpoint) == _host(peer):
            self._seen(Contact(node_id, endpoint, public_key))
        return node_id

    def _responder(self, endpoint: str, raw: Any) -> Contact:
        public_key, announced = decode_node(raw, "responder")
        contact = Contact(node_id_for(public_key), endpoint, public_key)
        if announced is not None:
            self._seen(contact)
        return contact

    def _check_responder(self, contact: Contact, raw: Any) -> None:
        public_key, _ = decode_node(raw, "responder")
        if public_key != contact.public_key:
            raise ValueError(f"{contact.endpoint} is now a different node")
        self._seen(contact)

    def _seen(self, contact: Contact) -> None:
        stale = self.routing_table.add(contact, asyncio.get_running_loop().time())
        if stale is not None and stale.node_id not in self._pinging:
            self._pinging.add(stale.node_id)
            self.spawn(self._ping_or_evict(stale))

    async def _ping_or_evict(self, stale: Contact) -> None:
        try:
            answered = await self.ping(stale.endpoint)
            if answered is None or answered.node_id != stale.node_id:
                self.routing_table.remove(stale.node_id)
        finally:
            self._pinging.discard(stale.node_id)

    def spawn(self, coroutine: Any) -> None:
        """Run background work that shutdown will cancel."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def cancel_background(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
