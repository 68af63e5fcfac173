"""Whole runs for tests: a small scenario that uses every feature of the format, and a way to
move a run's tasks around in memory (whatever iterates tasks in address order then changes)."""

from __future__ import annotations

import random
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from hivemind_sim.world.loop import VirtualTimeLoop

TRACE = "peer,join,leave\ntraced-0,0,3s\ntraced-0,5s,\ntraced-1,1s,6s\n"

SCENARIO = """\
schema_version: 1
name: every_feature
seed: 5
warmup: 8s
duration: 8s
sample_interval: 2s
topology: {kind: world_regions, jitter: 5%, loss: 0.1%, backbone_bandwidth: 10Gbit/s}
peers:
  - group: workers
    role: peer
    count: 2
    experts: 2
    concurrent_batches: 2
    regions: [eu-west, eu-central]
    link: {uplink: 20Mbit/s, downlink: 100Mbit/s, latency: 5ms}
    hardware: {device: 2TFLOP/s, trainer_device: 20kFLOP/s}
  - group: servers
    role: server
    count: 2
    experts: 2
    regions: [eu-west, us-east]
    link: {uplink: 50Mbit/s}
    churn:
      session: {distribution: weibull, shape: 0.7, median: 5s}
      downtime: {distribution: lognormal, median: 1s, sigma: 0.5}
      graceful: 50%
      min_alive: 1
  - group: trainers
    role: trainer
    count: 2
    client_mode: 50%
    regions: [eu-central]
    hardware: {trainer_device: 20kFLOP/s}
  - group: dht
    role: dht
    count: 14
    link: {uplink: 10Mbit/s, latency: 10ms, loss: 1%}
    churn:
      session: {distribution: exponential, mean: 5s}
      downtime: {distribution: pareto, shape: 1.5, minimum: 1s}
      graceful: 70%
      max_alive: 13
      start: lockstep
  - group: traced
    role: dht
    count: 2
    link: {uplink: 10Mbit/s}
    churn: {trace: trace.csv, graceful: 50%}
  - group: crowd
    role: dht
    count: 40
    join_at: 1s
    link: {uplink: 10Mbit/s, latency: 10ms}
events:
  - {name: leave, at: 0.9s, duration: 2s, action: leave, select: {group: dht, count: 4}}
  - {name: degrade, at: 1s, duration: 2s, action: degrade, select: {group: dht, count: 2},
     latency: 50ms, loss: 5%, bandwidth: 1Mbit/s}
  - {name: freeze, at: 2s, duration: 1.5s, action: freeze, select: {group: workers, count: 1}}
  - {name: slow, at: 2s, duration: 2s, action: slow_compute, select: {group: workers}, factor: 10}
  - {name: nan, at: 2.5s, duration: 1.5s, action: misbehave, select: {group: workers, count: 1}, output: nan}
  - {name: garbage, at: 2.5s, duration: 1.5s, action: misbehave, select: {group: servers, count: 1},
     output: garbage}
  - {name: split, at: 4s, duration: 1s, action: partition, sides: [{group: workers}]}
  - {name: crash, at: 5s, duration: 1.5s, action: crash, select: {group: workers, count: 1}}
  - {name: restart, at: 5.5s, action: restart, select: {group: servers, count: 1}}
  - {name: cut, at: 6s, action: partition, sides: [{region: eu-west}]}
  - {name: heal, at: 7s, action: heal}
  - {name: hostile, at: 1.5s, duration: 2s, action: hostile, behaviour: junk_contacts,
     select: {group: dht, count: 1}}
  - {name: store, at: 0.2s, action: store, key: scripted, select: {group: trainers, count: 1}}
  - {name: get, at: 0.5s, action: get, key: scripted, select: {group: trainers}}
  - {name: lookup, at: 0.8s, action: lookup, select: {group: trainers, count: 1}}
  - {name: forward, at: 1s, action: forward, select: {group: trainers, count: 1}}
workload:
  dht:
    stores_per_second: 20
    gets_per_second: 5
    lookups_per_second: 2
    keys: 500
    popularity: {distribution: zipf, exponent: 1.1}
  training:
    model: {hidden_dim: 8}
    grid: [4, 2]
    k_best: 2
    batch_size: 8
    forward_timeout: 1s
    backward_timeout: 1s
"""
"""Every event kind, every churn distribution (session and downtime) and start, graceful leaves,
both bounds on the live size, a churn trace, NAT, a flash crowd (met by graceful leaves as it
joins), link and path loss, jitter, backbone bandwidth, the DHT workload with lookups and
popular keys, and training by peers and trainers with two batches in flight. Trainers' own
layers are slow (20 kFLOP/s) to keep the step count, and the wall time, small."""


def write(folder: Path) -> Path:
    """The scenario and its churn trace in ``folder``; returns the scenario's path."""
    (folder / "trace.csv").write_text(TRACE)
    path = folder / "every_feature.yaml"
    path.write_text(SCENARIO)
    return path


def shuffle_task_addresses(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """From now on each task of a simulation lands elsewhere in memory than it otherwise would:
    random garbage is allocated (and some of it freed) before each one, as any other work in a
    process does. Whatever iterates tasks in address order then iterates them differently."""
    rng = random.Random(seed)
    ballast: list[object] = []
    create_task = VirtualTimeLoop.create_task

    def shuffled(self: VirtualTimeLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> Any:
        for _ in range(rng.randrange(4)):
            size = rng.randrange(1, 64)
            ballast.append(bytearray(8 * size) if rng.random() < 0.5 else [None] * size)
        if len(ballast) > 4096:
            del ballast[: rng.randrange(2048)]
        return create_task(self, coro, **kwargs)

    monkeypatch.setattr(VirtualTimeLoop, "create_task", shuffled)
