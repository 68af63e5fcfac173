"""A scenario that uses every feature of the format runs cleanly and observes every documented
metric (tests/every_feature.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import every_feature
import pytest

from hivemind_sim.cli import main
from hivemind_sim.scenario import schema
from hivemind_sim.scenario.loader import load_scenario
from hivemind_sim.scenario.names import COUNTERS, EVENTS

DOC = Path(__file__).resolve().parent.parent / "docs" / "scenarios.md"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[schema.Scenario, dict]:
    folder = tmp_path_factory.mktemp("every")
    path = every_feature.write(folder)
    assert main(["run", str(path), "--quiet", "--out", str(folder / "report")]) == 0
    return load_scenario(path), json.loads((folder / "report" / "metrics.json").read_text())


def test_it_uses_every_event_kind_and_churn_option(report) -> None:
    scenario, metrics = report
    assert {event.action for event in scenario.events} == set(schema.EVENT_ACTIONS)
    churns = [group.churn for group in scenario.peers if group.churn is not None]
    drawn = {type(t).__name__ for c in churns for t in (c.session, c.downtime) if t is not None}
    assert len(drawn) == 4, drawn  # exponential, weibull, lognormal, pareto
    assert any(c.trace for c in churns) and {c.start for c in churns if c.trace is None} == {
        "stationary",
        "lockstep",
    }
    assert {w["action"] for w in metrics["windows"]} == set(schema.EVENT_ACTIONS)


def test_every_documented_metric_is_observed(report) -> None:
    scenario, metrics = report
    groups = [group.group for group in scenario.peers]
    idle = [group.group for group in scenario.peers if not group.trains]  # no moe.step.<group>
    documented = {
        name
        for name in schema.metric_names(groups)
        if not any(name.startswith(f"moe.step.{group}.") for group in idle)
    }
    missing = sorted(documented - set(metrics["summary"]))
    assert not missing, f"documented but never recorded: {missing}"
    doc = DOC.read_text()
    for name in [*EVENTS, *COUNTERS]:
        assert re.search(rf"`{re.escape(name)}`", doc), f"docs/scenarios.md does not document {name}"


def test_nothing_failed_in_any_peer(report) -> None:
    _, metrics = report
    summary = metrics["summary"]
    assert metrics["stopped"] is None
    assert summary["peers.errors.total"] == 0 and summary["peers.join_failures.total"] == 0
    assert summary["moe.step.success_rate"] > 0.8 and summary["dht.get.success_rate"] > 0.8
