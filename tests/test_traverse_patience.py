"""traverse() with per-contact patience: a lost answer costs a lookup what that contact's round
trips allow, not an RPC timeout, and the last round asks the rest of the k nearest at once.

Virtual time (the sim loop): the fake network's latencies cost no real time and order nothing
by sleeping in the test itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_dht_traverse import LATENCY, K, Network, nearest_ids

from hivemind_core.dht.routing import Contact
from hivemind_core.dht.traverse import traverse

pytestmark = pytest.mark.asyncio(loop_factories=["sim"])

LOST = 1000.0  # an answer that never comes (the RPC's own timeout is not part of this fake)


def knowing(late: float, give_up: float) -> Any:
    """Patience for a caller that measured every contact's round trips."""
    return lambda contact: (late, give_up)


async def test_a_lost_answer_among_the_nearest_costs_its_patience_not_a_timeout() -> None:
    net = Network(seed=21)
    querier, target = net.ids[0], net.random_target()
    lost = net.truth(target, exclude=querier)[0]  # the very nearest never answers
    net.delay[lost] = LOST
    unanswered: list[Contact] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    patience = knowing(0.05, 0.2)
    options = {"patience": patience, "on_unanswered": unanswered.append, "deadline": start + 30}
    result = (await net.lookup(querier, [target], **options))[target]
    elapsed = loop.time() - start
    assert elapsed < 1.0, f"the lookup gave up on the lost answer instead of waiting: {elapsed}"
    assert result.converged
    assert nearest_ids(result) == net.truth(target, exclude=querier, count=K + 1)[1:]
    assert [c.node_id for c in unanswered] == [lost], "the caller hears who kept it waiting"
    if rpcs := asyncio.all_tasks() - {asyncio.current_task()}:
        await asyncio.wait(rpcs, timeout=60)
    assert net.cancelled == [lost], "the lost RPC is cancelled once the lookup is done"


async def test_without_patience_the_same_lookup_waits_for_the_answer() -> None:
    net = Network(seed=21)
    querier, target = net.ids[0], net.random_target()
    slow = net.truth(target, exclude=querier)[0]
    net.delay[slow] = 5.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = (await net.lookup(querier, [target]))[target]
    assert loop.time() - start >= 5.0
    assert nearest_ids(result) == net.truth(target, exclude=querier)


async def test_a_late_answer_that_comes_while_the_lookup_runs_still_counts() -> None:
    """Given up on at 0.05 s, the nearest node answers at 0.1 s, before the others converge."""
    net = Network(seed=22)
    querier, target = net.ids[0], net.random_target()
    truth = net.truth(target, exclude=querier)
    net.delay = dict.fromkeys(net.ids, 0.2)
    net.delay[truth[0]] = 0.3
    result = (await net.lookup(querier, [target], patience=knowing(0.05, 0.1)))[target]
    assert nearest_ids(result) == truth, "its answer arrived before convergence: it is among the nearest"


async def test_a_contact_never_measured_is_waited_for() -> None:
    """Patience None (nothing known): late after straggler_delay, but never given up."""
    net = Network(seed=21)
    querier, target = net.ids[0], net.random_target()
    slow = net.truth(target, exclude=querier)[0]
    net.delay[slow] = 3.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = (
        await net.lookup(querier, [target], patience=lambda c: None if c.node_id == slow else (0.05, 0.2))
    )[target]
    assert loop.time() - start >= 3.0
    assert nearest_ids(result) == net.truth(target, exclude=querier)


async def test_once_the_nearest_answered_the_rest_of_the_k_nearest_are_asked_at_once() -> None:
    """Starting from the true k nearest with alpha=3: the 3 nearest answer in one round trip, and
    the 17 others are then asked together, not 3 at a time (that took 7 round trips)."""
    net = Network(seed=23)
    querier, target = net.ids[0], net.random_target()
    truth = net.truth(target, exclude=querier)
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await traverse(
        [target],
        {target: [net.contacts[i] for i in truth]},
        ask=net.ask,
        k=K,
        alpha=3,
        max_rpcs=256,
        straggler_delay=0.5,
        exclude=querier,
    )
    assert nearest_ids(result[target]) == truth
    assert loop.time() - start == pytest.approx(2 * LATENCY)
    second_round = [node_id for t, node_id, _ in net.calls if t - start == pytest.approx(LATENCY)]
    assert len(second_round) == K - 3
