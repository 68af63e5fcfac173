"""DMoE training inside scenarios: batches in flight, expert-call metrics."""

from __future__ import annotations

import functools

import pytest

from hivemind_sim.scenario.format.loader import parse_scenario
from hivemind_sim.scenario.run.runner import run_scenario

TRAINING = """\
schema_version: 1
name: training
seed: 4
warmup: 5s
duration: {duration}s
sample_interval: 2s
peers:
  - group: servers
    role: server
    count: 3
    experts: 2
    link: {{uplink: 100Mbit/s, downlink: 100Mbit/s, latency: 20ms}}
  - group: trainers
    role: trainer
    count: 2
    concurrent_batches: {batches}
    link: {{uplink: 20Mbit/s, downlink: 50Mbit/s, latency: 30ms}}
workload:
  training:
    model: {{hidden_dim: 8}}
    grid: [3, 2]
    k_best: 2
    batch_size: 16
    optimizer: {{name: adam, lr: 0.01}}
"""


@functools.cache  # one run per concurrency for all the tests here
def train(batches: int, duration: float) -> dict[str, float]:
    text = TRAINING.format(batches=batches, duration=duration)
    return run_scenario(parse_scenario(text, filename="training.yaml")).recorder.summary()


@pytest.mark.parametrize("batches", [1, 2, 4])
def test_loss_falls_with_any_number_of_batches_in_flight(batches: int) -> None:
    duration = 16 / batches  # about as many steps at every concurrency
    summary = train(batches, duration)
    assert summary["moe.step.success_rate"] == 1.0
    assert summary["train.loss.final"] < 0.5 * summary["train.loss.first"], summary
    # the batches really are in flight together: steps take as long, and there are more of them
    steps_per_second = summary["moe.step.count"] / duration / 2
    assert steps_per_second * summary["moe.step.mean"] == pytest.approx(batches, rel=0.1)


def test_expert_calls_are_timed_one_by_one() -> None:
    summary = train(1, 16)
    calls, steps = summary["moe.expert_call.count"], summary["moe.step.count"]
    assert calls >= 4 * steps, "each step calls k_best=2 experts forward and backward"
    assert 0 < summary["moe.expert_call.p50"] <= summary["moe.expert_call.p99"] < summary["moe.step.p99"]
    assert summary["moe.expert_call.success_rate"] == 1.0
