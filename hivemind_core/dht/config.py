"""Tunable settings of a DHT node, with defaults that suit the public internet."""

from __future__ import annotations

import math
from dataclasses import dataclass


class DHTConfigError(ValueError):
    """A setting ``DHTConfig`` refuses. ``fields`` names the settings the message is about, in its
    order, so a scenario or a command line can point at the key or flag its user typed."""

    def __init__(self, message: str, *fields: str) -> None:
        super().__init__(message)
        self.fields = fields


@dataclass(frozen=True)
class DHTConfig:
    k: int = 20
    """Bucket size, and how many nearest nodes a lookup converges on."""
    alpha: int = 3
    """Parallel RPCs per lookup."""
    replicas: int = 5
    """How many of the nearest nodes a value is stored on."""
    rpc_timeout: float = 3.0
    """Seconds to wait for one DHT RPC to a contact whose round trips were never measured, and
    the most any DHT RPC waits; a contact that misses its timeout leaves the routing table."""
    min_rpc_timeout: float = 1.0
    """The least a DHT RPC waits: a contact whose round trips were measured gets SRTT + 4·RTTVAR
    within [min_rpc_timeout, rpc_timeout] (see ``rtt.RoundTrips``). One second, RFC 6298's
    minimum: an answer carrying a big entry takes longer than a small one's round trip. Above
    ``rpc_timeout``, ``rpc_timeout`` is used."""
    rtt_contacts: int = 256
    """Contacts whose round-trip times a node remembers (the least recently measured go first):
    about one routing table's worth, the contacts a node keeps calling. ~100 bytes each, which
    at 100,000 simulated peers is the difference between 2.5 and 10 GB."""
    straggler_delay: float = 0.5
    """After this many seconds a lookup stops waiting for an RPC to a contact whose round trips
    were never measured before asking another node; a measured one is waited on only until its
    answer is late (``rtt.RoundTrips.expected``)."""
    lookup_timeout: float = 30.0
    """Upper bound on one (batched) lookup."""
    max_lookup_rpcs: int = 64
    """Upper bound on RPCs a lookup spends on one key (a batch spends this per key)."""
    max_batch: int = 512
    """Most keys one store or find RPC may carry."""
    max_key_size: int = 1024
    """Largest serialized key or subkey, in bytes."""
    max_value_size: int = 64 * 1024
    """Largest stored value (after signing), in bytes."""
    cache_capacity: int = 1024
    """Values cached from lookups that passed through this node."""
    republish_interval: float = 600.0
    """How often a node re-stores what it holds on the current nearest nodes. Through two hours
    of heavy churn (Weibull sessions of median 30 min and downtimes of median 10 min, shape
    0.55, 70% crashes) Kademlia's hour kept 97-99% of keys, 20 minutes 98.8-99.8%, 10 minutes
    99.8-100%, for 13% (5000 peers) to 44% (1000 peers) more messages per peer than an hour:
    the cost grows with the records each peer holds (``benchmarks/dht_churn.py``)."""
    refresh_interval: float = 600.0
    """A bucket that saw no traffic for this long is refreshed with a lookup."""
    max_per_subnet: int | None = 2
    """Contacts per bucket from one IPv4 /24 (IPv6 /64); None disables the limit."""
    bootstrap_timeout: float = 10.0
    """Seconds to wait for initial peers to answer."""
    unresponsive_time: float = 30.0
    """A contact whose RPC failed, or that a lookup waited on until its deadline, is not asked
    again for this long (a frozen peer costs one lookup, not every one); any answer or request
    from it forgives it sooner."""
    reconnect_delay: float = 1.0
    """A node that lost every contact asks its initial peers again after this many seconds,
    doubling (jittered) after each try that fails, up to ``reconnect_max_delay``."""
    reconnect_max_delay: float = 60.0
    """Longest wait between two tries to reach the initial peers again."""
    max_ttl: float = 86400.0
    """Farthest a record's expiration may lie ahead of the clock, in seconds. Records are meant
    to be re-announced by whoever needs them (experts re-announce every few seconds with ~30 s
    lifetimes), so a day costs honest writers nothing, while a record nobody refreshes, a flood
    included, leaves every node's storage within a day. An expiration of 2**64 - 1 would pin it
    for good."""
    max_clock_skew: float = 300.0
    """How far ahead of ours another peer's clock may be: a record from elsewhere may expire up to
    ``max_ttl + max_clock_skew`` seconds from now (this node's own writes get ``max_ttl``)."""
    max_subkeys: int = 8192
    """Most subkeys one key holds; an expert grid of 8192 coordinates per dimension still fits."""
    max_entry_bytes: int = 8 * 1024 * 1024
    """Most bytes one key holds (all its subkeys), so a find answer for it fits in a frame."""
    max_answer_bytes: int = 16 * 1024 * 1024
    """Most bytes one find answer carries: entries that would go past it are left out (marked so,
    and the requester asks for them again), so a request naming many big keys costs this at most,
    decided before anything is built. At least ``max_entry_bytes``, so any one entry fits."""
    max_storage_bytes: int = 128 * 1024 * 1024
    """Most bytes held as a replica (see ``storage.record_size``); when full, new records are
    refused, never evicted for newcomers."""
    max_cache_bytes: int = 32 * 1024 * 1024
    """Most bytes of cached copies; when full, the least recently cached are forgotten."""
    max_bytes_per_source: int = 16 * 1024 * 1024
    """Most bytes one source (``storage.source_of``: a remote address, IPv4 /24, IPv6 /64) may
    have stored in this node's storage, and separately in its cache: one writer can fill an
    eighth of the storage at most, so seven others still find room."""

    def __post_init__(self) -> None:
        for name in (
            "k",
            "alpha",
            "replicas",
            "max_lookup_rpcs",
            "rtt_contacts",
            "max_batch",
            "max_subkeys",
            "max_entry_bytes",
            "max_answer_bytes",
            "max_storage_bytes",
            "max_cache_bytes",
            "max_bytes_per_source",
        ):
            if getattr(self, name) < 1:
                raise DHTConfigError(f"DHTConfig.{name} must be at least 1, got {getattr(self, name)}", name)
        for name in (
            "rpc_timeout",
            "min_rpc_timeout",
            "straggler_delay",
            "lookup_timeout",
            "republish_interval",
            "refresh_interval",
            "bootstrap_timeout",
            "max_ttl",
            "unresponsive_time",
            "reconnect_delay",
            "reconnect_max_delay",
        ):
            if not getattr(self, name) > 0:
                raise DHTConfigError(f"DHTConfig.{name} must be positive, got {getattr(self, name)}", name)
        if not 0 <= self.max_clock_skew < math.inf:
            raise DHTConfigError(
                f"DHTConfig.max_clock_skew must be finite and >= 0, got {self.max_clock_skew}",
                "max_clock_skew",
            )
        if self.reconnect_delay > self.reconnect_max_delay:
            raise DHTConfigError(
                f"DHTConfig.reconnect_delay ({self.reconnect_delay}) cannot exceed "
                f"reconnect_max_delay ({self.reconnect_max_delay})",
                "reconnect_delay",
                "reconnect_max_delay",
            )
        if self.max_answer_bytes < self.max_entry_bytes:
            raise DHTConfigError(
                f"DHTConfig.max_answer_bytes ({self.max_answer_bytes}) cannot be less than "
                f"max_entry_bytes ({self.max_entry_bytes}): an entry that fits could never be read",
                "max_answer_bytes",
                "max_entry_bytes",
            )
        if self.replicas > self.k:
            raise DHTConfigError(
                f"DHTConfig.replicas ({self.replicas}) cannot exceed k ({self.k})", "replicas", "k"
            )
