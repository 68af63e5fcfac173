"""Scripted operations (store, get, lookup, forward events) and ``Timeline.apply_at_now``: each
selected peer's outcome is kept and recorded as the workload's metrics are; a `slow` or
`plausible` misbehaving expert does what it says; and events applied one by one at the current
time replay, from a scenario file listing them, to the same trace digest."""

from __future__ import annotations

import math

import pytest
import torch

from hivemind_core.moe.server import ExpertBackend
from hivemind_sim.scenario.format.loader import ScenarioError, dump_resolved, parse_scenario
from hivemind_sim.scenario.format.schema import Scenario
from hivemind_sim.scenario.run.runner import open_run, run_scenario
from hivemind_sim.swarms import faults

SWARM = """\
name: ops
seed: 2
warmup: 20s
duration: 20s
peers:
  - {group: dht, role: dht, count: 8}
  - {group: servers, role: server, count: 4, experts: 4}
  - {group: trainers, role: trainer, count: 2}
workload:
  training: {grid: [4, 4], k_best: 4, k_min: 2, batch_size: 4, batches_in_flight: 0}
"""

EVENTS = """\
events:
  - {at: 1s, action: store, key: greeting, value_size: 40B, select: {peers: [dht-0]}}
  - {at: 2s, action: get, key: greeting, select: {group: dht, count: 3}}
  - {at: 2.5s, action: get, key: nobody-stored-this, select: {peers: [dht-1]}}
  - {at: 3s, action: lookup, select: {peers: [dht-2]}}
  - {at: 3.5s, action: lookup, target: 12345, select: {peers: [dht-3]}}
  - {at: 4s, action: forward, select: {group: trainers}}
  - {name: slow, at: 6s, duration: 5s, action: misbehave, output: slow, delay: 1s, select: {group: servers}}
  - {at: 7s, action: forward, select: {peers: [trainers-0]}}
  - {at: 12s, action: forward, select: {peers: [trainers-0]}}
"""


REPLAYED = """\
events:
  - {at: 1s, action: store, key: greeting, select: {peers: [dht-0]}}
  - {at: 2s, action: get, key: greeting, select: {group: dht, count: 3}}
  - {at: 2.5s, action: get, key: nobody-stored-this, select: {peers: [dht-1]}}
  - {at: 3s, action: lookup, select: {peers: [dht-2]}}
  - {at: 3.5s, action: hostile, behaviour: junk_contacts, duration: 5s, select: {peers: [dht-4, dht-5]}}
  - {at: 3.5s, action: lookup, target: 12345, select: {peers: [dht-3]}}
  - {at: 6s, action: get, key: greeting, select: {group: dht, count: 4}}
"""


def scenario(events: str = EVENTS) -> Scenario:
    return parse_scenario(SWARM + events, filename="ops.yaml")


def test_scripted_operations_keep_each_peers_outcome_and_record_metrics() -> None:
    with open_run(scenario()) as run:
        run.sim.run(run.main())
        outcomes, summary = run.timeline.outcomes, run.recorder.summary()
    (stored,) = outcomes[0]
    assert stored.peer == "dht-0" and stored.action == "store" and stored.ok
    assert isinstance(stored.value, bytes) and len(stored.value) == 40
    assert stored.started <= stored.ended
    assert [(o.ok, o.value) for o in outcomes[1]] == [(True, stored.value)] * 3
    assert [(o.peer, o.ok, o.value) for o in outcomes[2]] == [("dht-1", False, None)]
    for index in (3, 4):
        (lookup,) = outcomes[index]
        assert lookup.ok and lookup.value == lookup.detail["truth"], lookup.detail
    assert outcomes[4][0].detail["target"] == 12345
    assert 6 not in outcomes, "a fault has no outcomes"

    first = outcomes[5]
    assert [o.peer for o in first] == ["trainers-0", "trainers-1"]
    for forward in first:
        assert forward.ok and isinstance(forward.value, torch.Tensor) and forward.value.shape == (4, 32)
        uids, weights = forward.detail["uids"], forward.detail["weights"]
        assert forward.detail["k_min"] == 2
        assert all(2 <= len(sample) <= 4 for sample in uids), uids  # k_min answered, at most k_best
        assert all(uid.startswith("ffn.") for sample in uids for uid in sample)
        assert torch.allclose(weights.sum(1), torch.ones(4)), weights
    # the slow experts answer 1 s late while the event lasts (forward and backward: 2 s), and
    # on time after it (the first forwards also searched the grid: a cold cache)
    (late,), (after,) = outcomes[7], outcomes[8]
    assert late.ok and late.ended - late.started >= 2.0
    assert after.ok and after.ended - after.started < 1.0

    assert summary["dht.store.count"] == 1 and summary["dht.get.count"] == 4
    assert summary["dht.get.success_rate"] == 0.75
    assert summary["dht.lookup.count"] == 2 and summary["dht.lookup.success_rate"] == 1.0
    assert summary["moe.forward.count"] == 4 and summary["moe.forward.success_rate"] == 1.0
    assert summary.get("moe.step.count", 0) == 0, "batches_in_flight 0: no training of their own"


def test_events_applied_now_replay_from_a_file_to_the_same_digest() -> None:
    """A driver applies each event when it gets to it (an operation may end after the next
    event's planned time: the event then happens when the operation is over, and says so).

    DHT operations and a hostile peer only: a replayed forward can differ by a few nanoseconds
    of virtual time (a driver's wait and a scheduled event's round times differently), which
    can swap two expert batches due within the loop's clock resolution."""
    planned = scenario(REPLAYED).events
    with open_run(scenario(events="")) as run:

        async def drive() -> None:
            await run.begin()
            for event in planned:
                await run.advance_to(run.start + event.at)
                now = event.model_copy(update={"at": run.clock()})
                index = await run.timeline.apply_at_now(now)
                assert run.timeline.events[index] is now
            await run.advance_to(run.end)
            await run.end_run()

        run.sim.run(drive())
        driven, outcomes, applied = run.sim.digest(), run.timeline.outcomes, run.timeline.events
    assert [event.at for event in applied] != [event.at for event in planned], "an operation ran late"
    listed = parse_scenario(dump_resolved(scenario(events="").model_copy(update={"events": tuple(applied)})))
    assert listed.events == tuple(applied)
    replayed = run_scenario(listed)
    assert replayed.stopped is None
    assert replayed.digest == driven
    assert sorted(outcomes) == [0, 1, 2, 3, 5, 6]
    assert all(outcome.ok for outcome in outcomes[6])


def test_plausible_answers_have_the_true_norms_and_garbage_does_not() -> None:
    backend = ExpertBackend.create("ffn.0", "ffn", 16, generator=torch.Generator().manual_seed(0))
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    true = backend.module(x).detach()
    answers = {}
    for output in ("plausible", "garbage"):
        assert faults.misbehave(backend, output=output, seed=3) == 1
        answers[output] = backend.module(x).detach()
    assert faults.behave(backend) == 1
    assert torch.equal(backend.module(x).detach(), true)
    plausible = answers["plausible"]
    assert torch.isfinite(plausible).all() and not torch.allclose(plausible, true)
    assert torch.allclose(plausible.norm(dim=1), true.norm(dim=1), rtol=1e-5)
    cosine = torch.nn.functional.cosine_similarity(plausible, true, dim=1)
    assert cosine.abs().max() < 0.9, "plausible junk points elsewhere"
    assert answers["garbage"].norm(dim=1).min() > 1000 * true.norm(dim=1).max()


def test_slow_needs_a_server_and_a_delay() -> None:
    backend = ExpertBackend.create("ffn.0", "ffn", 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="needs its ExpertServer"):
        faults.misbehave(backend, output="slow", delay=1.0)
    with pytest.raises(ValueError, match="delay is for output 'slow'"):
        faults.misbehave(backend, output="slow")
    with pytest.raises(ValueError, match="delay is for output 'slow'"):
        faults.misbehave(backend, output="nan", delay=1.0)
    assert not faults.misbehaving(backend)
    with torch.no_grad():
        assert not math.isnan(float(backend.module(torch.ones(1, 16)).sum()))


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("{at: 1s, action: store, key: k, duration: 5s, select: {group: dht}}", "takes no `duration`"),
        ("{at: 1s, action: forward, select: {group: dht}}", "forward needs peers that train"),
        ("{at: 1s, action: lookup, target: -1, select: {group: dht}}", "events.0.target"),
        (
            "{at: 1s, action: hostile, behavior: junk_contacts, select: {group: dht}}",
            "did you mean `behaviour`",
        ),
        (
            "{at: 1s, action: hostile, behaviour: junk_contact, select: {group: dht}}",
            "did you mean `junk_contacts`",
        ),
        (
            "{at: 1s, action: hostile, behaviour: junk_contacts, rate: 5/s, select: {group: dht}}",
            "events.0.rate: `rate` is for behaviours `never_read` and `store_flood`",
        ),
        (
            "{at: 1s, action: hostile, behaviour: store_flood, rate: fast, select: {group: dht}}",
            "like `200/s`",
        ),
        ("{at: 1s, action: misbehave, output: nan, delay: 1s, select: {group: servers}}", "events.0.delay"),
    ],
)
def test_a_mistake_in_a_new_event_names_its_key(event: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message.replace("`", ".").replace("(", ".")):
        parse_scenario(SWARM + f"events:\n  - {event}\n", filename="s.yaml")


def test_defaults_are_filled_in_and_a_scripted_get_makes_its_metric_observable() -> None:
    text = SWARM.replace(", batches_in_flight: 0", "") + (
        "events:\n"
        "  - {at: 1s, action: hostile, behaviour: never_read, select: {group: dht, count: 1}}\n"
        "  - {at: 1s, action: misbehave, output: slow, select: {group: servers}}\n"
        "  - {name: g, at: 2s, action: get, key: k, select: {group: dht}}\n"
        "assertions: ['dht.get.success_rate >= 0.9']\n"
    )
    loaded = parse_scenario(text, filename="s.yaml")
    assert loaded.events[0].rate == 100.0 and loaded.events[1].delay == 5.0
    assert loaded.workload.training is not None and loaded.workload.training.batches_in_flight is None
