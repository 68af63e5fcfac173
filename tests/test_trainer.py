"""The real-mode trainer (hivemind-core train and peer): its batches in flight run at once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from hivemind_core.bridge import LoopBridge
from hivemind_core.moe.client import MoEClient
from hivemind_core.training import Trainer, TrainingConfig
from hivemind_core.training.model import Replica


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_every_batch_in_flight_has_a_thread_of_its_own(world, monkeypatch) -> None:
    """More batches than asyncio's default pool has threads (min(32, CPUs + 4)) still all run
    at once: each step here waits for all the others."""
    in_flight = 40
    node = await world.dht()
    client = MoEClient(rpc=node.rpc, dht=node, bridge=LoopBridge(asyncio.get_running_loop()))
    trainer = Trainer(node, TrainingConfig(hidden_dim=8, batches_in_flight=in_flight), client)
    everyone = threading.Barrier(in_flight, timeout=30)

    def step(self: Trainer, replica: Replica) -> None:
        everyone.wait()  # raises BrokenBarrierError unless every batch is running
        self._ended(0.0, 1.0)

    monkeypatch.setattr(Trainer, "_step", step)
    await trainer.run(steps=in_flight)
    assert trainer.stats.steps == in_flight
