"""A Kademlia DHT: peers find each other and each other's records through it."""

from .config import DHTConfig, DHTConfigError
from .facade import DHT
from .identity import Identity
from .ids import distance, key_id, serialize_key
from .node import BootstrapError, DHTNode, StoreItem, ValueWithExpiration
from .routing import Contact, RoutingTable
from .stats import DHTStats
from .validation import RecordValidator, SignatureValidator

__all__ = [
    "DHT",
    "BootstrapError",
    "Contact",
    "DHTConfig",
    "DHTConfigError",
    "DHTNode",
    "DHTStats",
    "Identity",
    "RecordValidator",
    "RoutingTable",
    "SignatureValidator",
    "StoreItem",
    "ValueWithExpiration",
    "distance",
    "key_id",
    "serialize_key",
]
