"""DMoE training in simulation, run as a scenario: expert servers crash mid-run, the trainers
route around them and keep learning, and the same seed replays the same run to the byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hivemind_sim.scenario.format.loader import load_scenario
from hivemind_sim.scenario.run.runner import RunResult, run_scenario

SWARM = """\
schema_version: 1
name: moe_swarm
seed: 2
warmup: 10s
duration: 40s
sample_interval: 5s
peers:
  - group: servers
    role: server
    count: 6
    experts: 3
    link: {uplink: 200Mbit/s, downlink: 1Gbit/s, latency: 5ms}
  - group: trainers
    role: trainer
    count: 2
    link: {uplink: 50Mbit/s, downlink: 200Mbit/s, latency: 10ms}
events:
  - name: servers-crash
    at: 5s
    action: crash
    select: {group: servers, count: 2}
workload:
  training:
    model: {hidden_dim: 16}
    grid: [6, 3]
    k_best: 4
    k_min: 1
    batch_size: 16
    forward_timeout: 2s
    backward_timeout: 3s
    optimizer: {name: adam, lr: 0.01}
"""


def run(tmp_path: Path, *overrides: str) -> RunResult:
    path = tmp_path / "moe_swarm.yaml"
    path.write_text(SWARM)
    return run_scenario(load_scenario(path, overrides))


def losses(result: RunResult) -> np.ndarray:
    columns = result.recorder.value_columns("train.loss")
    assert columns is not None, "no training step was recorded"
    return columns[1]


def assert_learns(result: RunResult) -> None:
    """The mean loss of the last five steps is well below that of the first five (means smooth
    single-batch noise)."""
    loss = losses(result)
    assert loss.size >= 20 and np.isfinite(loss).all(), loss
    assert loss[-5:].mean() < 0.8 * loss[:5].mean(), (loss[:5], loss[-5:])


def test_a_small_swarm_lowers_the_loss_through_crashes(tmp_path: Path) -> None:
    result = run(tmp_path)
    summary = result.recorder.summary()
    assert summary["peers.alive.servers.final"] == 4, "two of the six servers stayed down"
    assert summary["moe.expert_failures.total"] > 0, "the trainers did meet the crashed servers"
    assert summary["moe.step.success_rate"] == 1.0
    assert_learns(result)


@pytest.mark.slow
@pytest.mark.timeout(900)  # three runs of ~40 s each on a quiet 2-core machine
def test_thirty_two_servers_and_eight_trainers_train_reproducibly_through_crashes(tmp_path: Path) -> None:
    bigger = (
        "peers.servers.count=32",
        "peers.trainers.count=8",
        "events.0.select.count=8",
        "workload.training.grid=[16,8]",
    )
    first, second = run(tmp_path, *bigger), run(tmp_path, *bigger)
    assert first.digest == second.digest
    np.testing.assert_array_equal(losses(first), losses(second))
    assert_learns(first)
    other = run(tmp_path, *bigger, "seed=4")
    assert other.digest != first.digest
