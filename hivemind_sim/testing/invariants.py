"""What must hold in a DHT swarm whatever happens to it: each check raises ``InvariantViolation``
naming the peer and what is wrong, so a failing property test says why in one line.

Checks read the live peers' state through the driver (routing tables, storage, config) and the
``Outcome`` of operations; they never act on the swarm, so checking does not change a run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.dht.ids import key_id, serialize_key

from .driver import SwarmDriver


class InvariantViolation(AssertionError):
    """An invariant of the swarm does not hold (the message says which, where and how)."""


def check(condition: object, message: str) -> None:
    """Raise ``InvariantViolation(message)`` unless ``condition`` holds."""
    if not condition:
        raise InvariantViolation(message)


# ---- the state of every live peer ----------------------------------------------------------------


def routing_tables(driver: SwarmDriver) -> None:
    """Every live peer's table: at most k contacts per bucket (and its bounded replacement cache),
    each in its bucket's range, never itself, only endpoints its transport can dial, each
    endpoint really that contact's (the peer placed there has that id), and ``nearest`` sorted
    by XOR distance and equal to a scan of the whole table."""
    identities = driver.swarm.identities
    for name in driver.live():
        node = driver.node(name)
        table = node.routing_table
        contacts = []
        for bucket in table.buckets:
            check(len(bucket.contacts) <= table.k, f"{name}: a bucket holds {len(bucket.contacts)} > k")
            check(
                len(bucket.replacements) <= table.replacement_size,
                f"{name}: a replacement cache holds {len(bucket.replacements)} > {table.replacement_size}",
            )
            for contact in bucket.contacts.values():
                check(bucket.covers(contact.node_id), f"{name}: contact {contact.endpoint} in a wrong bucket")
                contacts.append(contact)
        for contact in contacts:
            check(contact.node_id != node.node_id, f"{name}: its routing table holds itself")
            try:
                node.rpc.transport.check_endpoint(contact.endpoint)
            except ValueError as error:
                raise InvariantViolation(
                    f"{name}: routing table holds a contact its transport cannot dial: {error}"
                ) from None
            owner = identities.get(contact.endpoint)
            check(
                owner is not None and owner.node_id == contact.node_id,
                f"{name}: contact {contact.node_id:040x} claims endpoint {contact.endpoint!r}, "
                f"which is not its own",
            )
        for target in _probe_targets(node, contacts):
            nearest = table.nearest(target, table.k)
            distances = [contact.node_id ^ target for contact in nearest]
            check(distances == sorted(distances), f"{name}: nearest({target:x}) is not sorted by distance")
            scan = sorted(contact.node_id ^ target for contact in contacts)[: table.k]
            check(distances == scan, f"{name}: nearest({target:x}) misses nearer contacts it holds")


def _probe_targets(node: DHTNode, contacts: list[Any]) -> Iterable[int]:
    """Targets worth asking ``nearest`` about: its own id, its contacts' and their complements."""
    mask = (1 << 160) - 1
    yield node.node_id
    for contact in contacts[:4]:
        yield contact.node_id
        yield contact.node_id ^ mask


def memory_bounds(driver: SwarmDriver) -> None:
    """Every live peer keeps what others can make it hold under its configured bounds."""
    for name in driver.live():
        node = driver.node(name)
        config = node.config
        storage, cache = node.storage, node.cache
        check(
            storage.bytes_used <= config.max_storage_bytes,
            f"{name}: storage holds {storage.bytes_used} B > max_storage_bytes {config.max_storage_bytes}",
        )
        check(
            cache.bytes_used <= config.max_cache_bytes,
            f"{name}: cache holds {cache.bytes_used} B > max_cache_bytes {config.max_cache_bytes}",
        )
        check(len(cache) <= config.cache_capacity, f"{name}: cache holds {len(cache)} > cache_capacity")
        check(
            len(node.routing_table.buckets) <= 161,
            f"{name}: {len(node.routing_table.buckets)} buckets for 160-bit ids",
        )


def no_peer_errors(driver: SwarmDriver) -> None:
    """No peer's own code raised (``peers.errors``): whatever others sent, it kept running."""
    if driver.errors:
        peer, what, error = driver.errors[0]
        raise InvariantViolation(
            f"{len(driver.errors)} peer failure(s); the first: {peer}: {what} raised "
            f"{type(error).__name__}: {error}"
        )


# ---- operations ------------------------------------------------------------------------------------


def budget(config: DHTConfig, action: str) -> float:
    """The longest an operation may take: a lookup (get, lookup) is bounded by ``lookup_timeout``;
    a store adds one round of store RPCs (``rpc_timeout``)."""
    if action == "store":
        return config.lookup_timeout + config.rpc_timeout
    if action in ("get", "lookup"):
        return config.lookup_timeout
    raise ValueError(f"no DHT time budget for {action!r}")


def within_budget(outcome: Any, config: DHTConfig, *, slack: float = 0.1) -> None:
    """``outcome`` ended within its budget (plus ``slack`` seconds for the last answer's delivery)."""
    took = outcome.ended - outcome.started
    limit = budget(config, outcome.action)
    check(
        took <= limit + slack,
        f"{outcome.peer}: a {outcome.action} took {took:.3f} simulated s, over its {limit:g} s budget",
    )


def lookup_exact(outcome: Any) -> None:
    """A converged swarm's lookup finds the true k nearest live peers, nearest first."""
    check(outcome.ok, f"{outcome.peer}: a lookup did not converge in a calm swarm")
    found, truth = list(outcome.value or []), list(outcome.detail["truth"])
    target = outcome.detail["target"]
    distances = [node_id ^ target for node_id in found]
    check(distances == sorted(distances), f"{outcome.peer}: a lookup's results are not sorted by distance")
    missing = [node_id for node_id in truth if node_id not in found]
    if missing:
        raise InvariantViolation(
            f"{outcome.peer}: a lookup of {target:040x} missed {len(missing)} of the {len(truth)} "
            f"nearest live peers (the first: {missing[0]:040x})"
        )


def replicas(driver: SwarmDriver, key: str) -> list[str]:
    """The live peers that should hold ``key``: the ``replicas`` nearest to it (the oracle's)."""
    by_id = {identity.node_id: name for name, identity in driver.swarm.identities.items()}
    count = driver.swarm.config.replicas
    return [by_id[node_id] for node_id in driver.nearest_live(key_id(serialize_key(key)), count)]


def holders(driver: SwarmDriver, key: str) -> list[str]:
    """The live peers that hold ``key`` as a replica now (the oracle for "one replica lives")."""
    target = key_id(serialize_key(key))
    found = []
    for name in driver.live():
        node = driver.node(name)
        if node.storage.get(target, node.now()) is not None:
            found.append(name)
    return found


def all_of(driver: SwarmDriver) -> None:
    """The state invariants that hold at every step, whatever happened: tables, memory, no errors."""
    routing_tables(driver)
    memory_bounds(driver)
    no_peer_errors(driver)
