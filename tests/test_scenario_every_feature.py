"""A scenario that uses every feature of the format (tests/every_feature.py) runs cleanly, gives
one digest and one metrics.json in any process, under any PYTHONHASHSEED and wherever its tasks
land in memory, and observes every documented metric."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import every_feature
import pytest

from hivemind_sim.cli import main
from hivemind_sim.scenario.format import schema
from hivemind_sim.scenario.format.loader import load_scenario
from hivemind_sim.scenario.format.names import COUNTERS, EVENTS
from hivemind_sim.scenario.results import report
from hivemind_sim.scenario.results.report import deterministic_metrics

DOC = Path(__file__).resolve().parent.parent / "docs" / "scenarios.md"
NO_PLOTS = (
    "import sys\n"
    "from hivemind_sim.scenario.results import report\n"
    "report.write_plots = lambda *args, **kwargs: None  # not compared, and most of a report's time\n"
    "from hivemind_sim.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _another_hash_seed() -> str:
    """A PYTHONHASHSEED other than this process's (unset means random: 0 differs from it)."""
    return "1" if os.environ.get("PYTHONHASHSEED") == "0" else "0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[schema.Scenario, dict[str, Any], dict[str, Any]]:
    """The scenario, run in a fresh process under another hash seed, and here with its tasks
    shuffled in memory; both runs' metrics.json."""
    folder = tmp_path_factory.mktemp("every")
    path = every_feature.write(folder)
    env = {**os.environ, "PYTHONHASHSEED": _another_hash_seed()}
    command = [sys.executable, "-c", NO_PLOTS, "run", str(path), "--quiet", "--out", str(folder / "other")]
    subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "write_plots", lambda *args, **kwargs: None)
        every_feature.shuffle_task_addresses(patch, seed=2)
        assert main(["run", str(path), "--quiet", "--out", str(folder / "here")]) == 0
    here = deterministic_metrics(folder / "here" / "metrics.json")
    return load_scenario(path), here, deterministic_metrics(folder / "other" / "metrics.json")


def test_one_seed_gives_one_digest_and_metrics_anywhere(runs) -> None:
    _, here, other = runs
    assert here == other


OPERATIONS = ("store", "get", "lookup", "forward")


def test_it_uses_every_event_kind_and_churn_option(runs) -> None:
    scenario, metrics, _ = runs
    assert {event.action for event in scenario.events} == set(schema.EVENT_ACTIONS)
    windows = {w["name"]: (w["start_s"], w["end_s"]) for w in metrics["windows"]}
    for event in scenario.events:  # a restart, a heal and an operation are over at once; `cut` lasts
        lasting = event.duration and event.at + event.duration
        end = event.at if event.action in ("restart", "heal", *OPERATIONS) else lasting
        assert windows[event.name] == (event.at, end), event.name
    churns = [group.churn for group in scenario.peers if group.churn is not None]
    drawn = {type(t).__name__ for c in churns for t in (c.session, c.downtime) if t is not None}
    assert len(drawn) == 4, drawn  # exponential, weibull, lognormal, pareto
    assert any(c.trace for c in churns)
    assert {c.start for c in churns if c.trace is None} == {"stationary", "lockstep"}
    assert metrics["summary"]["peers.alive.crowd.final"] >= 30, "the flash crowd joined"


def test_every_documented_metric_is_observed(runs) -> None:
    scenario, metrics, _ = runs
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


def test_nothing_failed_in_any_peer(runs) -> None:
    _, metrics, _ = runs
    summary = metrics["summary"]
    assert metrics["during"]["crash"]["peers.alive.workers.min"] == 1, "the crash took its worker down"
    assert metrics["stopped"] is None and summary["peers.errors.total"] == 0
    # steps whose answers were junk (the misbehave windows) fail now instead of counting as
    # successes: about 1 in 5 of this short run's ~10 steps
    assert summary["moe.step.success_rate"] >= 0.75 and summary["dht.get.success_rate"] > 0.8
