"""Same scenario and seed, same trace digest: in any process, under any PYTHONHASHSEED."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def demo_digest(seed: int, hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    command = [
        sys.executable,
        "-m",
        "hivemind_sim.cli",
        "demo",
        "--peers",
        "60",
        "--rpcs",
        "8",
        "--seed",
        str(seed),
        "--json",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["calls"] > 0 and report["failures"], "the run must include crashes and losses"
    return report["digest"]


def test_same_seed_gives_the_same_digest_in_separate_processes() -> None:
    digests = {demo_digest(7, hash_seed) for hash_seed in ("0", "1", "4242", "random")}
    assert len(digests) == 1, digests


def test_another_seed_gives_another_digest() -> None:
    assert demo_digest(7, "0") != demo_digest(8, "0")


@pytest.mark.parametrize("seed", [0, 1])
def test_repeated_runs_in_one_process_agree(seed: int) -> None:
    from hivemind_sim.demo import SwarmConfig, run_swarm

    config = SwarmConfig(peers=40, rpcs_per_peer=5, seed=seed)
    first, second = run_swarm(config), run_swarm(config)
    assert first.digest == second.digest
    assert first.messages == second.messages and first.failures == second.failures
