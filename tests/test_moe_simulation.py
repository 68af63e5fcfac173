"""DMoE training in simulation: 32 expert servers and 8 trainers, reproducible to the byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hivemind_sim.moe_swarm import MoESwarmConfig, run_moe_swarm


def test_thirty_two_servers_and_eight_trainers_train_reproducibly_through_crashes() -> None:
    config = MoESwarmConfig(servers=32, trainers=8, steps=6, crash_servers=4, seed=3)
    first, second = run_moe_swarm(config), run_moe_swarm(config)
    assert first.digest == second.digest
    assert first.losses == second.losses
    assert all(len(history) == 6 for history in first.losses), "every trainer finished every step"
    assert first.messages > 10_000
    other = run_moe_swarm(MoESwarmConfig(servers=32, trainers=8, steps=6, crash_servers=4, seed=4))
    assert other.digest != first.digest


def test_the_same_run_in_other_processes_gives_the_same_digest() -> None:
    def digest(hash_seed: str) -> str:
        command = [
            sys.executable,
            "-m",
            "hivemind_sim.cli",
            "moe",
            "--servers",
            "32",
            "--trainers",
            "8",
            "--steps",
            "3",
            "--seed",
            "5",
            "--json",
        ]
        result = subprocess.run(
            command,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return json.loads(result.stdout.strip().splitlines()[-1])["digest"]

    assert digest("0") == digest("12345")


@pytest.mark.slow
def test_training_lowers_the_loss() -> None:
    report = run_moe_swarm(MoESwarmConfig(servers=32, trainers=8, steps=60, crash_servers=8, seed=1))
    assert report.last_loss < 0.8 * report.first_loss, (report.first_loss, report.last_loss)
