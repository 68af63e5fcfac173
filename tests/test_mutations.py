"""Mutation checks: the DHT state machine catches deliberately broken variants of the DHT.

Each test breaks one thing the issue names (monkeypatched for the test only), runs the DHT
state machine (with the rules that can reveal it) for a bounded number of examples, and
requires an invariant to fail with the message that says what broke; the shrunk example's
scenario YAML, written by the machine, must replay (with the same mutation in place) to the
digest the machine saw.

Finding a mutation takes seconds; shrinking the failure to a few steps takes a minute or two of
CPU each, so these run with ``-m slow`` (``tox -e slow``, ``tox -e deep``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule, run_state_machine_as_test
from test_stateful_dht import DHTMachine, dht_swarm, peer_index

from hivemind_core.dht import Contact, DHTNode
from hivemind_core.dht import lookups as lookups_module
from hivemind_core.dht.codec import decode_node
from hivemind_core.dht.ids import key_id, node_id_for
from hivemind_core.dht.membership import Membership
from hivemind_core.net import RPC
from hivemind_sim.testing import invariants, replay

pytestmark = pytest.mark.slow

HUNT = settings(
    max_examples=100,
    stateful_step_count=10,
    derandomize=True,  # the same examples every run: a hunt takes the same time every run
    report_multiple_bugs=False,  # the first failure, shrunk: the one the test names
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
"""A bounded hunt; it stops at the first failure and shrinks it."""


def hunt(machine: type[DHTMachine], tmp_path: Path, match: str) -> invariants.InvariantViolation:
    """Run ``machine`` until an invariant fails; check the failure and that its file replays."""
    machine.replay_directory = tmp_path
    with pytest.raises(invariants.InvariantViolation, match=match) as failure:
        run_state_machine_as_test(machine, settings=HUNT)
    saved = failure.value.hivemind_replay
    assert saved.digest is not None
    assert replay.run(saved.path) == saved.digest
    return failure.value


# Each hunt keeps the rules that can reveal its mutation (a rule set to None is no rule) on one
# fixed swarm, so that it finds a failure in a few examples and shrinks it in a few more; the
# full machine (test_stateful_dht.py) has every rule and draws the swarm.


class Hunt(DHTMachine):
    join = None

    @initialize()
    def join_eight(self) -> None:
        self.start(dht_swarm(8, seed=0))


class ReplicaHunt(Hunt):
    """Stores, crashes of the peers holding a key and reads, all of one key."""

    crash_or_leave = restart = freeze = partition = degrade = hostile = lookup = settle_then_lookup = None
    store = get = crash_a_holder = None

    @rule(index=peer_index)
    def store_alpha(self, index: int) -> None:
        DHTMachine.store(self, index, "alpha", 600.0)

    @rule(index=peer_index)
    def crash_an_alpha_holder(self, index: int) -> None:
        DHTMachine.crash_a_holder(self, "alpha", index)

    @rule(index=peer_index)
    def get_alpha(self, index: int) -> None:
        DHTMachine.get(self, index, "alpha")


class EndpointHunt(Hunt):
    """Hostile peers announcing endpoints that are not theirs, time, lookups."""

    crash_or_leave = crash_a_holder = restart = freeze = partition = degrade = None
    store = get = settle_then_lookup = None

    @rule(index=peer_index, behaviour=st.sampled_from(["foreign_endpoint", "unparsable_endpoint"]))
    def hostile(self, index: int, behaviour: str) -> None:
        self.driver.hostile([self.pick(index)], behaviour, duration=10.0)
        self.disturbed(10.0)


class FrozenHunt(Hunt):
    """Freezes, time, and operations that must end within their budgets meanwhile."""

    crash_or_leave = crash_a_holder = restart = partition = degrade = hostile = settle_then_lookup = None


def test_a_dht_that_stores_on_one_replica_only_loses_acknowledged_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def store_on_the_nearest_only(self: DHTNode, items: Any) -> list[bool]:
        records = [self.writes.prepare(item) for item in items]
        targets = [key_id(record.key) for record in records]
        lookups = await self.lookups.run(targets, k=self.config.replicas)
        stored = []
        for target, record in zip(targets, records, strict=True):
            nearest = lookups[target].nearest[:1]
            if not nearest or (nearest[0].node_id ^ target) > (self.node_id ^ target):
                stored.append(self.storage.store(target, record, self.now()))
            else:
                stored.append(any(await self.calls.store_all(nearest[0], [record])))
        return stored

    monkeypatch.setattr(DHTNode, "store_many", store_on_the_nearest_only)
    hunt(ReplicaHunt, tmp_path, "failed although its store was acknowledged")


def test_a_routing_table_that_accepts_any_endpoint_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def believe_anyone(self: Membership, peer: str, raw_sender: Any) -> int:
        public_key, endpoint = decode_node(raw_sender, "sender")
        node_id = node_id_for(public_key)
        if endpoint is not None:
            self.seen(Contact(node_id, endpoint, public_key))
        return node_id

    monkeypatch.setattr(Membership, "observe_requester", believe_anyone)
    hunt(
        EndpointHunt, tmp_path, "routing table holds a contact its transport cannot dial|which is not its own"
    )


def test_a_lookup_that_never_times_out_a_frozen_contact_overruns_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traverse, call = lookups_module.traverse, RPC.call

    async def without_deadline(*args: Any, **options: Any) -> Any:
        return await traverse(*args, **{**options, "deadline": None})

    async def patient(self: RPC, peer: str, method: str, body: Any = None, *, timeout: Any = None) -> Any:
        return await call(self, peer, method, body, timeout=1e9 if method == "dht.find" else timeout)

    monkeypatch.setattr(lookups_module, "traverse", without_deadline)
    monkeypatch.setattr(RPC, "call", patient)
    hunt(FrozenHunt, tmp_path, "over its .* budget")
