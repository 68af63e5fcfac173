"""DMoE training in simulation: 32 expert servers and 8 trainers, reproducible to the byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hivemind_sim.swarms.moe_swarm import MoESwarmConfig, run_moe_swarm


@pytest.mark.slow  # the scenario tests cover training runs and their digests across processes
def test_thirty_two_servers_and_eight_trainers_train_reproducibly_through_crashes() -> None:
    config = MoESwarmConfig(servers=32, trainers=8, steps=6, crash_servers=4, seed=3)
    first, second = run_moe_swarm(config), run_moe_swarm(config)
    assert first.digest == second.digest
    assert first.losses == second.losses
    assert all(len(history) == 6 for history in first.losses), "every trainer finished every step"
    assert first.messages > 10_000
    other = run_moe_swarm(MoESwarmConfig(servers=32, trainers=8, steps=6, crash_servers=4, seed=4))
    assert other.digest != first.digest


@pytest.mark.slow  # the scenario tests cover training runs and their digests across processes
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


def test_a_small_swarm_lowers_the_loss_through_crashes() -> None:
    """The default suite's version of the slow test below: 6 servers (2 crash), 2 trainers, 30
    steps, a few seconds of wall time. Means over 5 steps smooth single-batch noise."""
    config = MoESwarmConfig(
        servers=6, trainers=2, grid=(4, 4), steps=30, crash_servers=2, crash_at=2.0, seed=2
    )
    report = run_moe_swarm(config)
    assert all(len(history) == config.steps for history in report.losses), "every trainer finished"
    first = sum(sum(history[:5]) / 5 for history in report.losses) / len(report.losses)
    last = sum(sum(history[-5:]) / 5 for history in report.losses) / len(report.losses)
    assert last < 0.8 * first, (first, last)


@pytest.mark.slow
def test_training_lowers_the_loss() -> None:
    report = run_moe_swarm(MoESwarmConfig(servers=32, trainers=8, steps=60, crash_servers=8, seed=1))
    assert report.last_loss < 0.8 * report.first_loss, (report.first_loss, report.last_loss)
