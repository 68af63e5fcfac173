"""Counters a DHT node keeps about itself, so users and scenarios can see what happened."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DHTStats:
    """Running totals since the node started; read them, never write them from outside."""

    undecodable_values: int = 0
    """Values found by a lookup that could not be decoded (dropped; logged at WARNING)."""
    rpcs: int = 0
    """DHT requests this node sent (ping, store, find), answered or not."""
    rpc_failures: int = 0
    """Of those, the ones that got no usable answer (timeout, lost link, error, malformed)."""
    disconnections: int = 0
    """Times the node lost every responsive contact (``DHTNode.connected`` turned False)."""
    reconnect_attempts: int = 0
    """Times a disconnected node asked its initial peers again."""
    handovers_skipped: int = 0
    """Newcomers handed nothing because too many were already waiting for their hand-over (the
    next republish reaches them instead)."""
