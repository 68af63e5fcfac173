"""hivemind_sim.strategies: every drawn scenario validates, every kind of thing is drawn, and
small drawn scenarios run to the end, the same way twice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from hivemind_sim import Topology
from hivemind_sim.scenario.format import schema
from hivemind_sim.scenario.format.loader import parse_scenario
from hivemind_sim.scenario.run.runner import run_scenario
from hivemind_sim.strategies import (
    GENERATED_KINDS,
    HOSTILE_BEHAVIOURS,
    MISBEHAVIOURS,
    WORLD_REGIONS,
    Data,
    hostile_behaviours,
    misbehaviours,
    scenarios,
    to_yaml,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_drawn_scenario_validates(data: Data) -> None:
    scenario = parse_scenario(to_yaml(data))  # what `hivemind-sim validate` reads: raises if invalid
    assert len(scenario.events) == len(data["events"])
    assert scenario.total_peers <= 12


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.data())
def test_drawn_scenarios_respect_their_bounds(max_peers: int, data: st.DataObject) -> None:
    drawn = data.draw(scenarios(max_peers=max_peers, max_events=2, min_duration=5, max_duration=20))
    scenario = parse_scenario(to_yaml(drawn))
    assert scenario.total_peers <= max_peers
    assert len(scenario.events) <= 2
    assert 5 <= scenario.duration <= 20


def test_world_regions_are_the_topologys() -> None:
    assert list(WORLD_REGIONS) == Topology.world_regions().nodes


REACHABLE: dict[str, tuple[str, ...]] = {
    "action": tuple(schema.EVENT_ACTIONS),
    "topology": ("world_regions", *GENERATED_KINDS),
    "churn": ("exponential", "weibull", "lognormal", "pareto"),
    "role": ("dht", "server", "trainer", "peer"),
    "select": ("group", "role", "region", "regions", "peers", "fraction", "count"),
    "group": ("join_at", "client_mode", "churn", "link", "hardware", "regions"),
    "tcp": ("handshake", "retransmit"),
}
"""Everything a drawn scenario should be able to hold, by what it is."""


def _seen(data: Data) -> Iterator[tuple[str, str]]:
    """(what, which) for everything of ``REACHABLE`` that ``data`` holds."""
    yield "topology", data["topology"]["kind"]
    yield from (("tcp", key) for key, on in data["topology"].get("tcp", {}).items() if on)
    for group in data["peers"]:
        yield "role", group["role"]
        yield from (("group", key) for key in group if key in REACHABLE["group"])
        if "churn" in group:
            yield "churn", group["churn"]["session"]["distribution"]
    for event in data["events"]:
        yield "action", event["action"]
        yield from (("select", key) for key in event.get("select", {}))


def test_everything_a_scenario_can_hold_is_drawn() -> None:
    """Every event kind, topology kind, churn distribution, role, selector key and optional
    group key turns up: most in a sweep of 300 draws, and any the sweep missed (the draws differ
    between hypothesis versions) in a search of up to 2,000 more."""
    seen: set[tuple[str, str]] = set()
    quick = settings(database=None, deadline=None, suppress_health_check=list(HealthCheck))

    @settings(quick, max_examples=300, derandomize=True)
    @given(scenarios(max_events=8))
    def draw(data: Data) -> None:
        seen.update(_seen(data))

    draw()
    wanted = [(what, which) for what, choices in REACHABLE.items() for which in choices]
    missing = []
    for item in (item for item in wanted if item not in seen):
        try:
            find(
                scenarios(max_events=8),
                lambda data, item=item: item in set(_seen(data)),
                settings=settings(quick, max_examples=2000, phases=[Phase.generate]),
            )
        except NoSuchExample:
            missing.append(item)
    assert not missing, f"never drawn: {missing}"


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(scenarios(max_peers=4, max_events=3, min_duration=5, max_duration=10))
def test_small_drawn_scenarios_run_to_the_end_the_same_way_twice(data: Data) -> None:
    scenario = parse_scenario(to_yaml(data))
    first = run_scenario(scenario)
    assert first.stopped is None, f"{first.stopped}\n{to_yaml(data)}"
    again = run_scenario(scenario)
    assert again.digest == first.digest, to_yaml(data)


@pytest.mark.parametrize(
    ("strategy", "key", "value"),
    [(misbehaviours(), "output", output) for output in MISBEHAVIOURS]
    + [(hostile_behaviours(), "behaviour", behaviour) for behaviour in HOSTILE_BEHAVIOURS],
)
def test_every_misbehaviour_and_hostile_behaviour_is_drawn(strategy: Any, key: str, value: str) -> None:
    """Each is drawn (the events that carry them are, in the test above)."""
    find(strategy, lambda drawn: drawn[key] == value, settings=settings(max_examples=500, database=None))
