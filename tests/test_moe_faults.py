"""Faults mid-training with real expert-server processes: killed (SIGKILL) and frozen (SIGSTOP).

Training must never stall beyond the layer's (finite, default) timeouts, and the experts of a
dead or frozen server must stop being chosen after the first step that meets the fault, not
when their DHT entries expire.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
import torch

from hivemind_core.dht import DHT
from hivemind_core.moe.client import MoEClient, MoEConfig, RemoteMixtureOfExperts
from hivemind_sim.swarms.processes import PeerProcess, expert_server

HID = 32


@pytest.fixture
def swarm() -> Iterator[tuple[PeerProcess, PeerProcess, DHT]]:
    options = ["--torch-threads", "1", "--duration", "300"]
    first = expert_server("ffn.0.[0:4]", hidden_dim=HID, args=options)
    second = expert_server("ffn.1.[0:4]", hidden_dim=HID, initial_peers=[first.endpoint], args=options)
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
        MoEConfig(in_features=HID, grid_size=(2, 4), uid_prefix="ffn", k_best=8, k_min=1), client=client
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

    second.signal(fault)
    faulted = time.perf_counter()
    durations = [step() for _ in range(5)]
    bound = layer.config.forward_timeout + layer.config.backward_timeout
    assert max(durations) < bound, f"a step took {max(durations):.1f} s; the timeouts allow {bound:.0f} s"
    first_bound = layer.config.timeout_after_k_min + 2.0
    assert durations[0] < first_bound, "the first step after the fault waited too long"
    assert max(durations[1:]) < 1.0, "the faulty server must not be waited for again"
    assert chosen_endpoints(layer, dht) == {first.endpoint}, "the faulty server is still being chosen"
    assert time.perf_counter() - faulted < 10, "dropping the server took longer than a few seconds"
