"""Tunable settings of a DHT node, with defaults that suit the public internet."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DHTConfig:
    k: int = 20
    """Bucket size, and how many nearest nodes a lookup converges on."""
    alpha: int = 3
    """Parallel RPCs per lookup."""
    replicas: int = 5
    """How many of the nearest nodes a value is stored on."""
    rpc_timeout: float = 3.0
    """Seconds to wait for one DHT RPC; a contact that misses it is evicted."""
    straggler_delay: float = 0.5
    """After this many seconds a lookup stops waiting for an RPC before asking another node."""
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
    republish_interval: float = 3600.0
    """How often a node re-stores what it holds on the current nearest nodes."""
    refresh_interval: float = 600.0
    """A bucket that saw no traffic for this long is refreshed with a lookup."""
    max_per_subnet: int | None = 2
    """Contacts per bucket from one IPv4 /24 (IPv6 /64); None disables the limit."""
    bootstrap_timeout: float = 10.0
    """Seconds to wait for initial peers to answer."""

    def __post_init__(self) -> None:
        for name in ("k", "alpha", "replicas", "max_lookup_rpcs", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"DHTConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "rpc_timeout",
            "straggler_delay",
            "lookup_timeout",
            "republish_interval",
            "refresh_interval",
            "bootstrap_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"DHTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.replicas > self.k:
            raise ValueError(f"DHTConfig.replicas ({self.replicas}) cannot exceed k ({self.k})")
