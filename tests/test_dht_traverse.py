"""traverse() as a pure function: lookups over an in-memory network of routing tables, no transport.

Each test runs on the virtual-time loop, so the simulated latencies below cost no real time.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from typing import Any

import pytest

from hivemind_core.dht.ids import ID_BITS
from hivemind_core.dht.routing import Contact, RoutingTable
from hivemind_core.dht.traverse import LookupResult, traverse

pytestmark = pytest.mark.asyncio(loop_factories=["sim"])

K = 20
LATENCY = 0.01


class Network:
    """``size`` nodes with seeded random ids; each table holds a random subset of the others.

    ``ask`` answers like a DHT node would: for each target, the ``K`` nearest contacts from the
    node's table and the value it holds (or None). Dead nodes answer None; slow ones take longer.
    """

    def __init__(self, size: int = 300, *, seed: int = 0, known: int = 150) -> None:
        self.rng = random.Random(seed)
        ids = list({self.rng.getrandbits(ID_BITS) for _ in range(size)})
        self.rng.shuffle(ids)
        self.ids = ids
        self.contacts = {i: Contact(i, f"127.0.0.1:{n + 1}", b"") for n, i in enumerate(ids)}
        self.tables: dict[int, RoutingTable] = {}
        for node_id in ids:
            table = RoutingTable(node_id, k=K, max_per_subnet=None)
            for other in self.rng.sample(ids, known):
                table.add(self.contacts[other], now=0.0)
            self.tables[node_id] = table
        self.dead: set[int] = set()
        self.delay: dict[int, float] = {}
        self.values: dict[tuple[int, int], Any] = {}
        self.calls: list[tuple[float, int, tuple[int, ...]]] = []
        self.cancelled: list[int] = []

    def random_target(self) -> int:
        return self.rng.getrandbits(ID_BITS)

    async def ask(self, contact: Contact, targets: list[int]) -> dict[int, tuple[list[Contact], Any]] | None:
        loop = asyncio.get_running_loop()
        self.calls.append((loop.time(), contact.node_id, tuple(targets)))
        try:
            await asyncio.sleep(self.delay.get(contact.node_id, LATENCY))
        except asyncio.CancelledError:
            self.cancelled.append(contact.node_id)
            raise
        if contact.node_id in self.dead:
            return None
        table = self.tables[contact.node_id]
        return {t: (table.nearest(t, K), self.values.get((contact.node_id, t))) for t in targets}

    def truth(self, target: int, *, exclude: int | None = None, count: int = K) -> list[int]:
        """The ``count`` nearest live nodes to ``target``, by brute force."""
        live = [i for i in self.ids if i not in self.dead and i != exclude]
        return sorted(live, key=lambda i: i ^ target)[:count]

    async def lookup(self, querier: int, targets: list[int], **options: Any) -> dict[int, LookupResult]:
        """Look up ``targets`` from ``querier``'s point of view, as DHTNode does."""
        table = self.tables[querier]
        settings: dict[int, Any] = {"k": K, "alpha": 3, "max_rpcs": 256, "straggler_delay": 0.5}
        settings.update(options)
        return await traverse(
            targets,
            {t: table.nearest(t, settings["k"]) for t in targets},
            ask=self.ask,
            exclude=querier,
            **settings,
        )


def nearest_ids(result: LookupResult) -> list[int]:
    return [c.node_id for c in result.nearest]


def asked_per_target(calls: list[tuple[float, int, tuple[int, ...]]]) -> Counter[tuple[int, int]]:
    return Counter((node_id, target) for _, node_id, targets in calls for target in targets)


async def test_lookup_converges_to_true_nearest() -> None:
    net = Network(seed=1)
    querier = net.ids[0]
    targets = [net.random_target() for _ in range(10)] + [net.ids[5], querier]
    for target in targets:
        net.calls.clear()
        result = (await net.lookup(querier, [target]))[target]
        assert nearest_ids(result) == net.truth(target, exclude=querier)
        assert not result.finished_early
        assert result.rpcs == len(net.calls), "every call carried this one target"
        assert max(asked_per_target(net.calls).values()) == 1, "nobody is asked twice about one target"
        assert querier not in {node_id for _, node_id, _ in net.calls}, "we never ask ourselves"


async def test_results_are_nearest_first_and_at_most_k() -> None:
    net = Network(seed=2)
    target = net.random_target()
    for k in (1, 5, K):
        result = (await net.lookup(net.ids[0], [target], k=k))[target]
        ids = nearest_ids(result)
        assert len(ids) == k
        assert ids == sorted(ids, key=lambda i: i ^ target)
        assert ids == net.truth(target, exclude=net.ids[0], count=k)


async def test_many_targets_in_one_call_are_batched() -> None:
    net = Network(seed=3)
    querier = net.ids[0]
    targets = [net.random_target() for _ in range(40)]
    separate = 0
    for target in targets:
        net.calls.clear()
        await net.lookup(querier, [target])
        separate += len(net.calls)
    net.calls.clear()
    # a generous budget: here only convergence may end a lookup
    results = await net.lookup(querier, targets, max_rpcs=10_000)
    batched = len(net.calls)
    assert set(results) == set(targets)
    for target in targets:
        assert nearest_ids(results[target]) == net.truth(target, exclude=querier)
    carried = sum(len(t) for _, _, t in net.calls)
    assert sum(r.rpcs for r in results.values()) == carried
    assert carried / batched > 1.3, "calls carry several targets on average"
    assert batched < 0.8 * separate, f"batched {batched} calls vs {separate} for separate lookups"


async def test_dead_nodes_are_marked_failed_and_excluded() -> None:
    net = Network(seed=4)
    querier = net.ids[0]
    targets = [net.random_target() for _ in range(8)]
    # kill a third of every target's true nearest nodes, and 30 random others
    for target in targets:
        net.dead.update(net.truth(target, exclude=querier)[::3])
    net.dead.update(net.rng.sample(net.ids[1:], 30))
    net.dead.discard(querier)
    results = await net.lookup(querier, targets)
    asked = asked_per_target(net.calls)
    assert max(asked.values()) == 1, "a failed node is not asked again about the same target"
    assert any(node_id in net.dead for node_id, _ in asked), "the lookup did run into dead nodes"
    for target in targets:
        ids = nearest_ids(results[target])
        assert not set(ids) & net.dead
        assert ids == net.truth(target, exclude=querier)


async def test_all_initial_contacts_dead_gives_empty_result() -> None:
    net = Network(seed=5)
    querier, target = net.ids[0], net.random_target()
    initial = net.tables[querier].nearest(target, K)
    net.dead.update(c.node_id for c in initial)
    # nobody else is ever learned, so nobody else is asked
    result = await traverse(
        [target], {target: initial}, ask=net.ask, k=K, alpha=3, max_rpcs=256, straggler_delay=0.5
    )
    assert result[target].nearest == []
    assert {node_id for _, node_id, _ in net.calls} == {c.node_id for c in initial}


async def test_on_found_true_stops_the_target_early() -> None:
    net = Network(seed=6)
    querier = net.ids[0]
    with_value, without_value = net.random_target(), net.random_target()
    holders = net.truth(with_value, exclude=querier, count=5)
    for node_id in holders:
        net.values[node_id, with_value] = b"the value"
    found: list[tuple[int, int, Any]] = []

    def on_found(target: int, contact: Contact, value: Any) -> bool:
        found.append((target, contact.node_id, value))
        return True

    full = (await net.lookup(querier, [with_value]))[with_value]
    results = await net.lookup(querier, [with_value, without_value], on_found=on_found)
    early = results[with_value]
    assert early.finished_early
    assert early.rpcs < full.rpcs
    assert len(found) == 1 and found[0][0] == with_value and found[0][1] in holders
    assert found[0][2] == b"the value"
    other = results[without_value]
    assert not other.finished_early
    assert nearest_ids(other) == net.truth(without_value, exclude=querier), "other targets go on"


async def test_on_found_false_keeps_looking() -> None:
    net = Network(seed=7)
    querier, target = net.ids[0], net.random_target()
    holders = net.truth(target, exclude=querier, count=5)
    for node_id in holders:
        net.values[node_id, target] = "v"
    seen: list[int] = []

    def on_found(_target: int, contact: Contact, _value: Any) -> bool:
        seen.append(contact.node_id)
        return False

    result = (await net.lookup(querier, [target], on_found=on_found))[target]
    assert not result.finished_early
    assert nearest_ids(result) == net.truth(target, exclude=querier)
    assert sorted(seen) == sorted(holders), "every holder's answer was offered to on_found"


@pytest.mark.parametrize("max_rpcs", [1, 4, 10])
async def test_max_rpcs_bounds_ask_calls(max_rpcs: int) -> None:
    net = Network(seed=8)
    target = net.random_target()
    result = (await net.lookup(net.ids[0], [target], max_rpcs=max_rpcs))[target]
    assert len(net.calls) == result.rpcs == max_rpcs, "the budget is used up, and not exceeded"
    assert set(nearest_ids(result)) <= {node_id for _, node_id, _ in net.calls}
    assert nearest_ids(result) != net.truth(target, exclude=net.ids[0]), "too few RPCs to converge"


@pytest.mark.parametrize("max_rpcs", [1, 4, 10])
async def test_max_rpcs_bounds_the_calls_carrying_each_target(max_rpcs: int) -> None:
    net = Network(seed=8)
    targets = [net.random_target() for _ in range(30)]
    results = await net.lookup(net.ids[0], targets, max_rpcs=max_rpcs)
    assert set(results) == set(targets)
    assert len(net.calls) <= max_rpcs * len(targets)
    carried = Counter(target for _, _, batch in net.calls for target in batch)
    for target, result in results.items():
        assert carried[target] == result.rpcs <= max_rpcs


async def test_slow_node_does_not_stall_the_lookup() -> None:
    """A contact slower than straggler_delay stops counting, so others are asked meanwhile."""
    net = Network(seed=9)
    querier, target = net.ids[0], net.random_target()
    ranked = net.truth(target, exclude=querier, count=120)
    # start from nodes ranked 60-80: the nearest of them is slow, and not among the final k
    initial = [net.contacts[i] for i in ranked[60:80]]
    slow = ranked[60]
    net.delay[slow] = 100.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await traverse(
        [target], {target: initial}, ask=net.ask, k=K, alpha=1, max_rpcs=256, straggler_delay=0.5
    )
    elapsed = loop.time() - start
    assert net.calls[0][1] == slow, "with alpha=1 the nearest initial contact is asked first"
    assert net.calls[1][0] - start == pytest.approx(0.5), "the next is asked after straggler_delay"
    assert elapsed < 10.0, "the lookup finished long before the slow node would answer"
    assert nearest_ids(result[target]) == ranked[:K]
    if rpcs := asyncio.all_tasks() - {asyncio.current_task()}:  # until the cancelled RPC has ended
        await asyncio.wait(rpcs, timeout=60)
    assert net.cancelled == [slow], "the straggler's RPC is cancelled once it is useless"


async def straggler_wait(loop: asyncio.AbstractEventLoop) -> float:
    """Seconds from a lookup's start until it gives up waiting on a slow contact (alpha=1)."""
    slow, fast = Contact(1, "127.0.0.1:1", b""), Contact(2, "127.0.0.1:2", b"")
    asked: dict[int, float] = {}

    async def ask(contact: Contact, targets: list[int]) -> dict[int, tuple[list[Contact], Any]]:
        asked[contact.node_id] = loop.time()
        await asyncio.sleep(100.0 if contact is slow else LATENCY)
        return {t: ([], None) for t in targets}

    start = loop.time()
    await traverse(
        [0], {0: [slow, fast]}, ask=ask, k=2, alpha=1, max_rpcs=10, straggler_delay=0.5, deadline=start + 5
    )
    return asked.get(fast.node_id, math.inf) - start


async def test_straggler_delay_holds_whenever_the_lookup_starts() -> None:
    """The same lookup, started at many virtual times, always moves on after straggler_delay."""
    loop = asyncio.get_running_loop()
    # from this start, started + 0.5 rounds to 2.21, and 2.21 - started is 0.4999999999999998
    await asyncio.sleep(1.7100000000000002 - loop.time())
    late = []
    for i in range(200):
        start = loop.time()
        wait = await straggler_wait(loop)
        if wait != pytest.approx(0.5):
            late.append((start, wait))
        await asyncio.sleep(0.3 + 0.01 * (i % 7))
    assert late == []


async def test_slow_node_among_the_nearest_is_waited_for() -> None:
    """A straggler that belongs to the k nearest is still part of the answer."""
    net = Network(seed=10)
    querier, target = net.ids[0], net.random_target()
    slow = net.truth(target, exclude=querier)[0]
    net.delay[slow] = 5.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = (await net.lookup(querier, [target]))[target]
    assert loop.time() - start >= 5.0
    assert nearest_ids(result) == net.truth(target, exclude=querier)


async def test_deadline_returns_partial_results() -> None:
    net = Network(seed=11)
    querier, target = net.ids[0], net.random_target()
    net.delay = dict.fromkeys(net.ids, 1.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    full = (await net.lookup(querier, [target], straggler_delay=5.0))[target]
    assert loop.time() - start >= 3.0 and full.rounds > 2, "without a deadline it takes several rounds"

    net.calls.clear()
    start = loop.time()
    partial = (await net.lookup(querier, [target], straggler_delay=5.0, deadline=start + 2.5))[target]
    assert loop.time() - start == pytest.approx(2.5)
    assert 0 < partial.rounds <= 2
    assert partial.nearest, "what was learned before the deadline is returned"
    answered_in_time = {node_id for t, node_id, _ in net.calls if t - start <= 1.5}
    assert set(nearest_ids(partial)) <= answered_in_time
    if rpcs := asyncio.all_tasks() - {asyncio.current_task()}:  # until the cancelled RPCs have ended
        await asyncio.wait(rpcs, timeout=60)
    in_flight = {node_id for t, node_id, _ in net.calls if t - start > 1.5}
    assert in_flight and set(net.cancelled) == in_flight, "RPCs in flight at the deadline are cancelled"
    assert nearest_ids(partial) != nearest_ids(full)


async def test_rounds_are_reported_and_small() -> None:
    net = Network(seed=12)
    querier = net.ids[0]
    targets = [net.random_target() for _ in range(20)]
    results = await net.lookup(querier, targets)
    rounds = [r.rounds for r in results.values()]
    assert min(rounds) >= 1
    assert max(rounds) <= 5, f"300 nodes should take a handful of hops, got {rounds}"


async def test_duplicate_targets_are_looked_up_once() -> None:
    net = Network(seed=13)
    target = net.random_target()
    results = await net.lookup(net.ids[0], [target, target])
    assert list(results) == [target]
    assert max(asked_per_target(net.calls).values()) == 1


async def test_empty_initial_contacts_finish_immediately() -> None:
    net = Network(size=30, seed=14, known=10)
    target = net.random_target()
    result = await traverse([target], {}, ask=net.ask, k=K, alpha=3, max_rpcs=10, straggler_delay=0.5)
    assert result[target].nearest == [] and result[target].rpcs == 0
    assert net.calls == []


async def test_converged_only_when_the_nearest_all_answered() -> None:
    """A store trusts ``converged``: a deadline, the budget or all-dead contacts must not set it."""
    net = Network(seed=15)
    querier, target = net.ids[0], net.random_target()
    assert (await net.lookup(querier, [target]))[target].converged
    assert not (await net.lookup(querier, [target], max_rpcs=2))[target].converged
    loop = asyncio.get_running_loop()
    net.delay = dict.fromkeys(net.ids, 1.0)
    late = (await net.lookup(querier, [target], deadline=loop.time() + 1.5))[target]
    assert late.nearest and not late.converged
    net.delay.clear()
    net.dead = set(net.ids)
    assert not (await net.lookup(querier, [target]))[target].converged, "nobody answered"
    alone = await traverse([target], {}, ask=net.ask, k=K, alpha=3, max_rpcs=10, straggler_delay=0.5)
    assert alone[target].converged, "a node that knows nobody is the whole network"


async def test_skipped_contacts_are_never_asked() -> None:
    net = Network(seed=16)
    querier, target = net.ids[0], net.random_target()
    truth = net.truth(target, exclude=querier)
    skipped = set(truth[:3])
    result = (await net.lookup(querier, [target], skip=skipped.__contains__))[target]
    assert not skipped & {node_id for _, node_id, _ in net.calls}
    assert nearest_ids(result) == [
        i for i in net.truth(target, exclude=querier, count=K + 3) if i not in skipped
    ]
    assert result.converged


async def test_contacts_still_awaited_at_the_deadline_are_reported() -> None:
    """A frozen replica among the nearest makes the lookup wait until its deadline: it is reported
    (once past the straggler delay), so the caller can skip it next time."""
    net = Network(seed=17)
    querier, target = net.ids[0], net.random_target()
    frozen = net.truth(target, exclude=querier)[1]
    net.delay[frozen] = 1000.0
    loop = asyncio.get_running_loop()
    reported: list[int] = []
    start = loop.time()
    result = (
        await net.lookup(
            querier, [target], deadline=start + 1.0, on_unanswered=lambda c: reported.append(c.node_id)
        )
    )[target]
    assert loop.time() - start == pytest.approx(1.0)
    assert reported == [frozen] and not result.converged
    net.calls.clear()
    start = loop.time()
    again = (await net.lookup(querier, [target], deadline=start + 1.0, skip={frozen}.__contains__))[target]
    assert loop.time() - start < 0.5, "skipping the frozen contact, the lookup converges at once"
    assert again.converged and frozen not in nearest_ids(again)


async def test_nothing_is_reported_when_the_lookup_converges() -> None:
    net = Network(seed=18)
    querier, target = net.ids[0], net.random_target()
    far = net.truth(target, exclude=querier, count=200)[-1]
    net.delay[far] = 1000.0  # slow, but not among the nearest: the lookup does not wait for it
    reported: list[Contact] = []
    loop = asyncio.get_running_loop()
    await net.lookup(querier, [target], deadline=loop.time() + 30, on_unanswered=reported.append)
    assert reported == []


async def test_also_ask_contacts_are_asked_first_and_awaited_wherever_they_are() -> None:
    """A node that knows nobody near a target asks its introducer too; the target waits for that
    answer even when the contacts it knew converged first (they may all be in the wrong region)."""
    net = Network(seed=19)
    querier, target = net.ids[0], net.random_target()
    introducer = net.truth(target, exclude=querier, count=len(net.ids))[-1]  # the farthest node
    net.delay[introducer] = 2.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = (
        await net.lookup(querier, [target], also_ask={target: [net.contacts[introducer]]}, max_rpcs=256)
    )[target]
    first_round = [node_id for t, node_id, _ in net.calls if t == start]
    assert introducer in first_round, "asked at once, however far from the target"
    assert loop.time() - start >= 2.0, "the lookup waited for its answer"
    assert result.converged and nearest_ids(result) == net.truth(target, exclude=querier)
    assert sum(1 for _, node_id, _ in net.calls if node_id == introducer) == 1
