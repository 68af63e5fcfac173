"""Every scenario in `scenarios/` runs and writes its whole report (reduced to a few seconds of
wall time here; the full runs are measured in benchmarks/scenarios.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hivemind_sim.cli import main

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
PLOTS = ("alive_peers", "lookup_latency_cdf", "success_rates", "training_loss", "expert_failures")

REDUCED = {
    "quickstart": ["warmup=10s", "duration=20s", "events.0.at=5s", "events.0.duration=10s"],
    "dht_churn_1k": [
        "peers.home.count=60",
        "peers.campus.count=20",
        "warmup=20s",
        "duration=2m",
        "assertions.3=peers.alive.home.min >= 10",
    ],
    "dmoe_training_failures": [
        "peers.servers.count=5",
        "peers.trainers.count=2",
        "duration=20s",
        "events.0.select.fraction=20%",
    ],
    "partition_heal": [
        "peers.americas.count=2",
        "peers.eurasia.count=2",
        "peers.dht.count=8",
        "duration=20s",
        "events.0.at=5s",
        "events.0.duration=10s",
    ],
    "flash_crowd": [
        "peers.crowd.count=40",
        "peers.crowd.join_at=10s",
        "duration=1m",
        "assertions.2=peers.alive.final >= 41",
    ],
    "heterogeneous_hardware": ["warmup=10s", "duration=10s", "peers.gaming.count=2"],
    "scale_10k": [
        "peers.volunteers.count=160",
        "peers.datacenters.count=40",
        "warmup=30s",
        "duration=1m",
    ],
}


def test_every_shipped_scenario_has_a_reduced_version_here() -> None:
    assert {path.stem for path in SCENARIOS} == set(REDUCED)


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_a_shipped_scenario_runs_and_writes_its_report(path: Path, tmp_path: Path) -> None:
    text = path.read_text()
    assert text.startswith("#"), "each shipped scenario opens with a comment saying what it shows"
    status = main(
        [
            "run",
            str(path),
            "--quiet",
            "--out",
            str(tmp_path),
            *[part for override in REDUCED[path.stem] for part in ("--set", override)],
        ]
    )
    assert status in (0, 1)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["assertion_counts"]["unknown"] == 0, metrics["assertions"]
    for plot in PLOTS:
        assert (tmp_path / f"{plot}.png").stat().st_size > 10_000
    assert (tmp_path / "report.md").read_text().count("|") > 20
