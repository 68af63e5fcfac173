"""The Kademlia routing table: k-buckets that split, with replacement caches.

A bucket covers a range of the id space and holds at most ``k`` contacts, least recently seen
first. Only the bucket covering our own id splits when full; elsewhere a newcomer waits in the
bucket's replacement cache while the caller pings the least recently seen contact, and takes
its place only if that contact fails (Kademlia's preference for long-lived peers). At most
``max_per_subnet`` contacts of a bucket may share an IPv4 /24 (IPv6 /64), so one operator
cannot fill a bucket cheaply; loopback addresses are exempt.

Every table holds one shared copy of each contact (:func:`canonical`): a contact decoded from
a message is a fresh id, endpoint and key, about 230 bytes, and in a simulation every one of a
hundred thousand peers keeps a hundred or more of them. Sharing equal immutable values
changes nothing but the memory they take.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

from .ids import ID_SPACE


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Contact:
    """How to reach a DHT node."""

    node_id: int
    endpoint: str
    public_key: bytes


_canonical: weakref.WeakValueDictionary[int, Contact] = weakref.WeakValueDictionary()
"""The copy of each contact that routing tables share, by node id, while any table holds it."""


def canonical(contact: Contact) -> Contact:
    """The shared copy of ``contact``: an equal one some table already holds, or ``contact``."""
    shared = _canonical.get(contact.node_id)
    if shared == contact:
        return shared
    _canonical[contact.node_id] = contact  # new, or the node moved: its latest address is shared
    return contact


@functools.lru_cache(maxsize=1 << 16)
def subnet_of(endpoint: str) -> str | None:
    """The /24 (IPv4) or /64 (IPv6) of an endpoint; None for names and loopback addresses."""
    host = endpoint.rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class KBucket:
    """Contacts whose ids fall in [lower, upper), least recently seen first."""

    __slots__ = ("contacts", "last_updated", "lower", "replacements", "upper")

    def __init__(self, lower: int, upper: int, last_updated: float = 0.0) -> None:
        self.lower = lower
        self.upper = upper
        self.contacts: dict[int, Contact] = {}
        self.replacements: dict[int, Contact] = {}
        self.last_updated = last_updated

    def covers(self, node_id: int) -> bool:
        return self.lower <= node_id < self.upper

    def split(self) -> tuple[KBucket, KBucket]:
        middle = (self.lower + self.upper) // 2
        left, right = (
            KBucket(self.lower, middle, self.last_updated),
            KBucket(middle, self.upper, self.last_updated),
        )
        for source, attribute in ((self.contacts, "contacts"), (self.replacements, "replacements")):
            for node_id, contact in source.items():
                getattr(left if node_id < middle else right, attribute)[node_id] = contact
        return left, right


class RoutingTable:
    """All the contacts a node knows, organised in k-buckets around its own id."""

    def __init__(
        self,
        node_id: int,
        *,
        k: int = 20,
        max_per_subnet: int | None = 2,
        replacement_size: int | None = None,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.node_id = node_id
        self.k = k
        self.max_per_subnet = max_per_subnet
        self.replacement_size = k if replacement_size is None else replacement_size
        self.buckets = [KBucket(0, ID_SPACE)]
        self._lowers = [0]

    def bucket_for(self, node_id: int) -> KBucket:
        return self.buckets[bisect.bisect_right(self._lowers, node_id) - 1]

    def get(self, node_id: int) -> Contact | None:
        return self.bucket_for(node_id).contacts.get(node_id)

    def __contains__(self, node_id: int) -> bool:
        return node_id in self.bucket_for(node_id).contacts

    def __len__(self) -> int:
        return sum(len(bucket.contacts) for bucket in self.buckets)

    def __iter__(self) -> Iterator[Contact]:
        for bucket in self.buckets:
            yield from bucket.contacts.values()

    def add(self, contact: Contact, now: float) -> Contact | None:
        """Record that ``contact`` is alive.

        Returns the least recently seen contact of a full bucket when the newcomer had to wait
        in the replacement cache: the caller should ping it and call :meth:`remove` if it
        fails. Returns None otherwise.
        """
        return self.admit(contact, now)[1]

    def admit(self, contact: Contact, now: float) -> tuple[bool, Contact | None]:
        """Like :meth:`add`, but also says whether ``contact`` entered the table just now."""
        if contact.node_id == self.node_id:
            return False, None
        while True:
            bucket = self.bucket_for(contact.node_id)
            bucket.last_updated = now
            known = bucket.contacts.pop(contact.node_id, None)
            if known is not None:  # now the most recently seen
                known = known if known == contact else canonical(contact)
                bucket.contacts[known.node_id] = known
                return False, None
            if not self._subnet_allows(bucket, contact):
                return False, None
            if len(bucket.contacts) < self.k:
                bucket.replacements.pop(contact.node_id, None)
                contact = canonical(contact)
                bucket.contacts[contact.node_id] = contact  # keyed by the shared id too
                return True, None
            if bucket.covers(self.node_id) and bucket.upper - bucket.lower > 1:
                self._split(bucket)
                continue
            bucket.replacements.pop(contact.node_id, None)
            contact = canonical(contact)
            bucket.replacements[contact.node_id] = contact
            while len(bucket.replacements) > self.replacement_size:
                del bucket.replacements[next(iter(bucket.replacements))]
            return False, next(iter(bucket.contacts.values()))

    def remove(self, node_id: int) -> None:
        """Forget a failed contact; the most recently seen replacement takes its place."""
        bucket = self.bucket_for(node_id)
        bucket.replacements.pop(node_id, None)
        if bucket.contacts.pop(node_id, None) is None:
            return
        for candidate_id in reversed(list(bucket.replacements)):
            candidate = bucket.replacements[candidate_id]
            if self._subnet_allows(bucket, candidate):
                del bucket.replacements[candidate_id]
                bucket.contacts[candidate_id] = candidate
                return

    def nearest(self, target: int, count: int, *, exclude: int | None = None) -> list[Contact]:
        """The ``count`` known contacts closest to ``target`` by XOR distance.

        Buckets are power-of-two-aligned ranges, so all ids in one bucket lie in one interval
        of XOR distance from ``target``, and distinct buckets in disjoint intervals: visiting
        buckets in the order of their interval finds the nearest contacts without scanning the
        whole table.
        """
        ordered = sorted(self.buckets, key=lambda b: (b.lower ^ target) & ~(b.upper - b.lower - 1))
        found: list[Contact] = []
        enough = count if exclude is None else count + 1  # one of them may be the excluded one
        for bucket in ordered:
            if len(found) >= enough:
                break
            found.extend(bucket.contacts.values())
        if exclude is not None:
            found = [c for c in found if c.node_id != exclude]
        found.sort(key=lambda c: c.node_id ^ target)
        return found[:count]

    def stale_buckets(self, now: float, max_age: float) -> list[KBucket]:
        return [bucket for bucket in self.buckets if now - bucket.last_updated > max_age]

    def _split(self, bucket: KBucket) -> None:
        index = self.buckets.index(bucket)
        left, right = bucket.split()
        self.buckets[index : index + 1] = [left, right]
        self._lowers[index : index + 1] = [left.lower, right.lower]

    def _subnet_allows(self, bucket: KBucket, contact: Contact) -> bool:
        if self.max_per_subnet is None:
            return True
        subnet = subnet_of(contact.endpoint)
        if subnet is None:
            return True
        same = sum(1 for c in bucket.contacts.values() if subnet_of(c.endpoint) == subnet)
        return same < self.max_per_subnet
