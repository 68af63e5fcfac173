"""Same workload and seed, same trace digest and metrics: in any process, under any PYTHONHASHSEED,
wherever in memory the run's objects happen to land (tests/test_determinism_order.py pins each
place that once depended on memory addresses, the garbage collector or threads;
tests/test_scenario_every_feature.py checks a scenario using every feature the same way)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from every_feature import shuffle_task_addresses

from hivemind_sim.scenario.format.loader import load_scenario
from hivemind_sim.scenario.run.runner import run_scenario


def test_dht_swarm_with_churn_is_reproducible_across_hash_seeds() -> None:
    """A DHT workload (joins, stores, gets, 30% leaving) gives one digest under any hash seed."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "dht.py"
    digests = set()
    for hash_seed in ("0", "77"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, str(script), "--transport", "sim", "--peers", "150", "--keys", "20"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        report_line = json.loads(result.stdout.strip().splitlines()[-1])
        assert report_line["get_success_after_churn"] == 1.0
        digests.add(report_line["digest"])
    assert len(digests) == 1, digests


CROWD_MEETS_LEAVES = """\
schema_version: 1
name: crowd_meets_leaves
seed: 2
warmup: 4s
duration: 3s
sample_interval: 1s
topology: {kind: world_regions, jitter: 5%}
peers:
  - group: base
    role: dht
    count: 25
    link: {uplink: 10Mbit/s, latency: 10ms}
  - group: crowd
    role: dht
    count: 60
    join_at: 2s
    link: {uplink: 10Mbit/s, latency: 10ms}
events:
  - {name: leave, at: 1.9s, action: leave, select: {group: base, count: 10}}
workload:
  dht: {stores_per_second: 30, keys: 1000}
"""


def _digest_and_summary(path: Path) -> tuple[str, str]:
    result = run_scenario(load_scenario(path))
    return result.digest, json.dumps(result.recorder.summary(), sort_keys=True)


def test_a_flash_crowd_meeting_graceful_leaves_repeats_wherever_its_tasks_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holders hand records to the newcomers of a flash crowd while some of them leave gracefully
    and the run ends: each cancels several hand-overs at once, and a cancelled request sends a
    CANCEL frame. They went out in address order (a set of tasks), so one seed gave a different
    digest in every process; a run with its tasks elsewhere in memory must repeat exactly."""
    path = tmp_path / "crowd.yaml"
    path.write_text(CROWD_MEETS_LEAVES)
    first = _digest_and_summary(path)
    shuffle_task_addresses(monkeypatch, seed=1)
    assert _digest_and_summary(path) == first
