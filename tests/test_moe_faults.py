"""Faults mid-training with real expert-server processes: killed (SIGKILL) and frozen (SIGSTOP).

Training must never stall beyond the layer's (finite, default) timeouts, and the experts of a
dead or frozen server must stop being chosen after the first step that meets the fault, not
when their DHT entries expire.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import torch

from hivemind_core.dht import DHT
from hivemind_core.moe.client import MoEClient, RemoteMixtureOfExperts

HID = 32


class ServerProcess:
    """An ``hivemind-core expert-server`` process, ended by its PID."""

    def __init__(self, experts: str, *initial_peers: str) -> None:
        command = [
            sys.executable,
            "-m",
            "hivemind_core.cli",
            "expert-server",
            "--experts",
            experts,
            "--hidden-dim",
            str(HID),
            "--torch-threads",
            "1",
            "--duration",
            "300",
        ]
        if initial_peers:
            command += ["--initial-peers", *initial_peers]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        banner = self.process.stdout.readline()
        assert banner.startswith("expert server with"), banner
        self.endpoint = banner.split()[-1]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
        self.process.communicate(timeout=30)  # also closes our end of its stdout


@pytest.fixture
def swarm() -> Iterator[tuple[ServerProcess, ServerProcess, DHT]]:
    first = ServerProcess("ffn.0.[0:4]")
    second = ServerProcess("ffn.1.[0:4]", first.endpoint)
    dht = DHT(initial_peers=[first.endpoint, second.endpoint], client_mode=True)
    try:
        yield first, second, dht
    finally:
        dht.shutdown()
        first.stop()
        second.stop()


def trainer(dht: DHT) -> tuple[RemoteMixtureOfExperts, object]:
    client = MoEClient.from_dht(dht)
    layer = RemoteMixtureOfExperts(
        in_features=HID, grid_size=(2, 4), uid_prefix="ffn", client=client, k_best=8, k_min=1
    )  # default, finite timeouts
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.01)

    def step() -> float:
        started = time.perf_counter()
        loss = layer(torch.randn(16, HID)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    return layer, step


def chosen_endpoints(layer: RemoteMixtureOfExperts, dht: DHT) -> set[str]:
    logits = [torch.zeros(1, 2), torch.zeros(1, 4)]
    picks = dht.bridge.run(layer.searcher.search(logits, 8, fresh=True))
    return {choice.endpoint for choice in picks[0]}


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_training_survives_a_server_fault_within_the_timeouts(swarm, fault: signal.Signals) -> None:
    first, second, dht = swarm
    layer, step = trainer(dht)
    for _ in range(3):
        step()
    assert chosen_endpoints(layer, dht) == {first.endpoint, second.endpoint}

    os.kill(second.process.pid, fault)
    faulted = time.perf_counter()
    durations = [step() for _ in range(5)]
    bound = layer.forward_timeout + layer.backward_timeout
    assert max(durations) < bound, f"a step took {max(durations):.1f} s; the timeouts allow {bound:.0f} s"
    assert durations[0] < layer.timeout_after_k_min + 2.0, "the first step after the fault waited too long"
    assert max(durations[1:]) < 1.0, "the faulty server must not be waited for again"
    assert chosen_endpoints(layer, dht) == {first.endpoint}, "the faulty server is still being chosen"
    assert time.perf_counter() - faulted < 10, "dropping the server took longer than a few seconds"
