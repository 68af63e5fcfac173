"""A small scenario that uses every feature of the format: every role, event kind, churn
distribution and option (a trace among them), link and path loss, jitter, NAT, a flash crowd,
the DHT workload with lookups, and training with batches in flight. Tests run it to check that
every documented metric is observed and that one seed gives one digest."""

from __future__ import annotations

from pathlib import Path

TRACE = "peer,join,leave\ntraced-0,0,6s\ntraced-0,9s,\ntraced-1,3s,11s\n"

SCENARIO = """\
schema_version: 1
name: every_feature
seed: 11
warmup: 10s
duration: 14s
sample_interval: 2s
topology: {kind: world_regions, jitter: 5%, loss: 0.2%, backbone_bandwidth: 10Gbit/s}
peers:
  - group: servers
    role: server
    count: 4
    experts: 2
    regions: [eu-west, us-east]
    link:
      uplink: {distribution: lognormal, median: 50Mbit/s, sigma: 0.5}
      downlink: {distribution: choice, values: [100Mbit/s, 1Gbit/s]}
      latency: {distribution: uniform, low: 5ms, high: 20ms}
    hardware: {device: 5TFLOP/s}
  - group: peers
    role: peer
    count: 2
    regions: [eu-west]
    concurrent_batches: 2
    hardware: {device: 2TFLOP/s, trainer_device: 500GFLOP/s}
  - group: trainers
    role: trainer
    count: 1
    regions: [us-east]
  - group: dht
    role: dht
    count: 6
    client_mode: 20%
    churn:
      session: {distribution: exponential, mean: 20s}
      downtime: {distribution: exponential, mean: 4s}
      graceful: 50%
      min_alive: 3
  - group: weibull
    role: dht
    count: 3
    churn:
      session: {distribution: weibull, shape: 0.7, median: 15s}
      downtime: {distribution: lognormal, median: 3s, sigma: 0.5}
      max_alive: 3
  - group: pareto
    role: dht
    count: 3
    churn:
      session: {distribution: pareto, shape: 1.5, minimum: 5s}
      downtime: {distribution: pareto, shape: 2, minimum: 2s}
      graceful: 100%
      start: lockstep
  - group: lognormal
    role: dht
    count: 3
    link: {loss: 2%}
    churn:
      session: {distribution: lognormal, median: 10s, sigma: 1}
      downtime: {distribution: weibull, shape: 1.5, scale: 3s}
      graceful: 30%
  - group: traced
    role: dht
    count: 2
    churn: {trace: trace.csv, graceful: 50%}
  - group: crowd
    role: dht
    count: 3
    join_at: 4s
events:
  - {name: crash, at: 1s, duration: 3s, action: crash, select: {group: servers, count: 1}}
  - {name: freeze, at: 2s, duration: 3s, action: freeze, select: {group: servers, count: 1}}
  - {name: degrade, at: 3s, duration: 4s, action: degrade, select: {group: dht},
     latency: 50ms, loss: 5%, bandwidth: 1Mbit/s}
  - {name: slow, at: 4s, duration: 3s, action: slow_compute, select: {role: server}, factor: 10}
  - {name: nan, at: 5s, duration: 3s, action: misbehave, select: {peers: [servers-2]}, output: nan}
  - {name: garbage, at: 6s, duration: 2s, action: misbehave, select: {peers: [servers-3]}, output: garbage}
  - {name: split, at: 7s, duration: 3s, action: partition, sides: [{regions: [us-east, us-west, sa-east]}]}
  - {name: leave, at: 8s, duration: 2s, action: leave, select: {group: dht, count: 1}}
  - {name: restart, at: 9s, action: restart, select: {group: weibull, count: 1}}
  - {name: cut, at: 10s, action: partition, sides: [{region: asia-east}]}
  - {name: heal, at: 12s, action: heal}
workload:
  dht:
    stores_per_second: 4
    gets_per_second: 8
    lookups_per_second: 2
    keys: 40
    popularity: {distribution: zipf, exponent: 1.1}
    ttl: 10m
    value_size: 128B
  training:
    model: {hidden_dim: 8, expert: ffn}
    grid: [4, 3]
    k_best: 2
    k_min: 1
    forward_timeout: 1s
    backward_timeout: 1s
    batch_size: 8
    optimizer: {name: sgd, lr: 0.05}
"""


def write(folder: Path) -> Path:
    """The scenario and its churn trace in ``folder``; returns the scenario's path."""
    (folder / "trace.csv").write_text(TRACE)
    path = folder / "every_feature.yaml"
    path.write_text(SCENARIO)
    return path
