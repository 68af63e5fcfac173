"""Serving the DHT RPCs (dht.ping, dht.store, dht.find) to other nodes.

A malformed body is answered with an error naming the field at fault (a ``ValueError``, which
the RPC layer sends back); the node keeps serving everyone else. A well-formed record that may
not be stored (over a limit, expiring too far ahead, a bad signature, no room left) is refused
alone, with the reason in its ``[stored, reason]`` result. Wire formats are in :mod:`.codec`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from ..net import RPC
from .codec import decode_record, encode_entry, encode_node, encode_nodes, require
from .config import DHTConfig
from .ids import ID_BYTES, key_id
from .membership import Membership
from .storage import LocalStorage, source_of
from .validation import RecordRules


class DHTHandlers:
    """Answers other nodes from this node's storage and routing table."""

    def __init__(
        self,
        *,
        config: DHTConfig,
        membership: Membership,
        storage: LocalStorage,
        cache: LocalStorage,
        rules: RecordRules,
        clock: Callable[[], float],
        me: Callable[[], list[Any]],
    ) -> None:
        self.config = config
        self.membership = membership
        self.storage = storage
        self.cache = cache
        self.rules = rules
        self.clock = clock
        self.me = me

    def register(self, rpc: RPC) -> None:
        rpc.register("dht.ping", self.ping)
        rpc.register("dht.store", self.store)
        rpc.register("dht.find", self.find)

    async def ping(self, peer: str, body: Any) -> Any:
        require(isinstance(body, list) and len(body) == 1, "ping body must be [sender]")
        self.membership.observe_requester(peer, body[0])
        return [self.me()]

    async def store(self, peer: str, body: Any) -> Any:
        require(isinstance(body, list) and len(body) == 2, "store body must be [sender, records]")
        sender, raw_records = body
        require(isinstance(raw_records, list), "store records must be a list")
        limit = self.config.max_batch
        if len(raw_records) > limit:
            raise ValueError(f"store carries {len(raw_records)} records; the limit is {limit}")
        records = [decode_record(raw, f"records[{i}]") for i, raw in enumerate(raw_records)]
        self.membership.observe_requester(peer, sender)
        now = self.clock()
        source = source_of(peer)
        results = []
        for record, is_cache in records:
            reason = self.rules.check(record, now)
            if reason is None:
                storage = self.cache if is_cache else self.storage
                reason = storage.put(key_id(record.key), record, now, source=source)
            results.append([reason is None, reason])
        return [self.me(), results]

    async def find(self, peer: str, body: Any) -> Any:
        """The nearest contacts to each id, and the entry held under it while the answer's
        budget lasts (``max_answer_bytes``, checked before an entry is copied or encoded);
        an entry left out is answered ``false``."""
        require(isinstance(body, list) and len(body) == 3, "find body must be [sender, ids, count]")
        sender, raw_ids, count = body
        # messages are formatted only on failure: this runs for every find
        if not (isinstance(raw_ids, list) and len(raw_ids) <= self.config.max_batch):
            raise ValueError(f"find ids must be a list of at most {self.config.max_batch}")
        if not (isinstance(count, int) and not isinstance(count, bool) and 0 < count <= self.config.k):
            raise ValueError(f"find count must be in 1..{self.config.k}")
        if not ({*map(type, raw_ids)} <= {bytes} and {*map(len, raw_ids)} <= {ID_BYTES}):  # C speed
            bad = next(i for i, raw in enumerate(raw_ids) if not _is_id(raw))
            raise ValueError(f"ids[{bad}] must be {ID_BYTES} bytes")  # formatted only on failure
        if len(set(raw_ids)) != len(raw_ids):  # one big entry named 500 times made a 3.9 GB answer
            first: dict[bytes, int] = {}
            repeat = next(i for i, raw in enumerate(raw_ids) if first.setdefault(raw, i) != i)
            raise ValueError(f"ids[{repeat}] repeats ids[{first[raw_ids[repeat]]}]")
        ids = [int.from_bytes(raw, "big") for raw in raw_ids]
        sender_id = self.membership.observe_requester(peer, sender)
        now = self.clock()
        me = self.me()
        contacts, all_indices = self._nearest(ids, count, sender_id)
        budget: int | None = None  # worked out once an entry is found: most finds meet none
        results = []
        for target, indices in zip(ids, all_indices, strict=True):
            entry: list[Any] | bool | None = None
            for storage in (self.storage, self.cache):
                size = storage.size_of(target, now)  # the charged size bounds the encoded one
                if size:
                    if budget is None:
                        budget = (
                            self.config.max_answer_bytes
                            - _ANSWER_FRAME
                            - _node_bytes(me)
                            - len(msgpack.packb(contacts, use_bin_type=True))  # one C call, not one each
                            - (_RESULT_FRAME * len(ids) + _INDEX_BYTES * sum(map(len, all_indices)))
                        )
                    if size <= budget:
                        budget -= size
                        held = storage.get(target, now)
                        entry = None if held is None else encode_entry(held)
                    else:
                        entry = False  # held, but left out: the requester asks for it again
                    break
            results.append([entry, indices])
        return [me, contacts, results]

    def _nearest(self, ids: list[int], count: int, sender_id: int) -> tuple[list[list[Any]], list[list[int]]]:
        """The contacts nearest to each id, each encoded once, and per id their indices."""
        table = self.membership.routing_table
        if len(ids) == 1:  # nearly every find: no contact can repeat
            nearest = table.nearest(ids[0], count, exclude=sender_id)
            return encode_nodes(nearest), [list(range(len(nearest)))]
        contacts: list[list[Any]] = []
        index_of: dict[int, int] = {}
        all_indices = []
        for target in ids:
            indices = []
            for contact in table.nearest(target, count, exclude=sender_id):
                index = index_of.get(contact.node_id)
                if index is None:
                    index = index_of[contact.node_id] = len(contacts)
                    contacts.append(encode_node(contact.public_key, contact.endpoint))
                indices.append(index)
            all_indices.append(indices)
        return contacts, all_indices


_ANSWER_FRAME = 16
"""Bytes of msgpack framing around a find answer's three parts, at most."""
_RESULT_FRAME = 8
"""Framing of one ``[entry|nil|false, [index, ...]]`` result besides its entry and indices."""
_INDEX_BYTES = 5
"""Largest packed contact index (a msgpack uint32)."""


def _node_bytes(node: list[Any]) -> int:
    """An upper bound on a packed ``[public_key, endpoint]``."""
    public_key, endpoint = node
    return 16 + len(public_key) + (0 if endpoint is None else len(endpoint.encode()))


def _is_id(raw: Any) -> bool:
    return isinstance(raw, bytes) and len(raw) == ID_BYTES
