"""Same workload and seed, same trace digest: in any process, under any PYTHONHASHSEED (scenario
runs are checked the same way in tests/test_scenario_run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


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
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["get_success_after_churn"] == 1.0
        digests.add(report["digest"])
    assert len(digests) == 1, digests
