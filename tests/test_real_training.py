"""Real peers as OS processes on loopback: ``hivemind-core train`` and ``peer`` train through
expert servers while one server is killed (SIGKILL) and another frozen (SIGSTOP) mid-training."""

from __future__ import annotations

import math
import re
import signal
import urllib.request
from collections.abc import Iterator

import pytest

from hivemind_core.training import TrainingConfig
from hivemind_sim.swarms.processes import PeerProcess, dht_peer, expert_server, peer, trainer

HID = "16"
FORWARD, BACKWARD = 2.0, 4.0
TRAINING = [
    "--hidden-dim", HID, "--grid", "ffn.3x4", "--k-best", "4", "--k-min", "1", "--status-interval", "1",
    "--forward-timeout", str(FORWARD), "--backward-timeout", str(BACKWARD), "--torch-threads", "1",
    "--duration", "240",
]  # fmt: skip
STATUS = re.compile(
    r"steps (?P<steps>\d+) \((?P<failed>\d+) failed\), loss (?P<loss>\S+), "
    r"expert failures (?P<expert_failures>\d+), longest step (?P<longest>[\d.]+) s"
)


def statuses(process: PeerProcess) -> Iterator[dict[str, float]]:
    """Its status lines, parsed, as they come."""
    for line in process.lines():
        found = STATUS.search(line)
        if found:
            yield {key: float(value) for key, value in found.groupdict().items()}


def until(process: PeerProcess, steps: float, *, most_lines: int = 240) -> dict[str, float]:
    """Read status lines until the process has done ``steps`` steps (at most ``most_lines``)."""
    for count, status in enumerate(statuses(process)):
        if status["steps"] >= steps:
            return status
        assert count < most_lines, f"{steps:g} steps never came: {status}"
    raise AssertionError("the process ended before its steps")


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text page, by name and labels."""
    with urllib.request.urlopen(url, timeout=30) as page:
        text = page.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.fixture
def swarm() -> Iterator[tuple[PeerProcess, ...]]:
    started: list[PeerProcess] = []
    try:
        started.append(dht_peer("--duration", "300"))
        joining = ["--initial-peers", started[0].endpoint]
        server_args = [*joining, "--torch-threads", "1", "--duration", "300"]
        started.append(expert_server("ffn.0.[0:4]", hidden_dim=int(HID), args=server_args))
        started.append(expert_server("ffn.1.[0:4]", hidden_dim=int(HID), args=server_args))
        started.append(peer("ffn.2.[0:4]", *joining, *TRAINING))
        started.append(trainer(*joining, *TRAINING, "--batches-in-flight", "2", "--metrics-port", "0"))
        yield tuple(started)
    finally:
        for process in reversed(started):
            process.stop()


def test_training_goes_on_through_a_killed_and_a_frozen_server(swarm) -> None:
    _, killed, frozen, both, training = swarm
    metrics_url = re.fullmatch(r"metrics at (http://\S+)", next(training.lines()))
    assert metrics_url, "the trainer says where its Prometheus metrics are"
    first = until(training, 20)
    killed.signal(signal.SIGKILL)
    frozen.signal(signal.SIGSTOP)
    at_fault = until(training, first["steps"] + 1)
    after = until(training, at_fault["steps"] + 60)
    peer_after = until(both, 40)
    frozen.signal(signal.SIGCONT)

    worst = TrainingConfig(forward_timeout=FORWARD, backward_timeout=BACKWARD).longest_step
    for status in (after, peer_after):
        assert status["longest"] <= worst, f"a step took {status['longest']} s, over {worst} s"
    assert after["expert_failures"] > 0, "the faults were met"
    assert after["loss"] < first["loss"], f"loss went from {first['loss']} to {after['loss']}"
    # Prometheus sees what the status line says, under the scenario reports' metric names
    scraped = scrape(metrics_url.group(1))
    assert scraped['moe_step_seconds_count{ok="true"}'] >= after["steps"]
    assert scraped["moe_expert_failures_total"] >= after["expert_failures"] > 0
    assert scraped["moe_bans_total"] >= 1, "the killed and the frozen server were banned"
    assert scraped["dht_contacts"] >= 1 and math.isfinite(scraped["train_loss"])
    # SIGTERM: both stop cleanly (the peer's experts checkpointed, records handed on)
    for process in (training, both):
        output = process.stop()
        assert process.process.returncode == 0 and "stopped" in output, output
