"""DMoE training inside a scenario: datasets, the trainer's model, and its step loop.

Each trainer peer trains ``Linear -> RemoteMixtureOfExperts -> Linear`` on its own batches
through the unmodified core client. Its steps run in threads under the deterministic baton,
and its own local layers take virtual time on the trainer's device (a slow trainer is slow).
The model and optimizer outlive the peer's downtime, as a checkpoint on disk would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import torch

from hivemind_core.dht import DHTNode
from hivemind_core.moe.client import MoEClient, RemoteMixtureOfExperts
from hivemind_core.moe.client.stats import ExpertCall
from hivemind_core.training import (
    STEP_FAILURES,
    Dataset,
    Replica,
    TrainerModel,
    attach_mixtures,
    make_dataset,
    make_mixture,
    make_optimizer,
)

from ...swarms.baton import Baton
from ..format.schema import TrainingWorkload
from ..results.metrics import Recorder
from .failures import PeerFailures

__all__ = ["STEP_FAILURES", "Dataset", "Trainer", "make_dataset"]


class Trainer:
    """One trainer peer: its model, optimizer and batches, and the loops that train them.

    ``concurrent_batches`` loops share the model as asynchronous SGD does: each batch computes
    its forward and backward with the parameters as they were when it started, and its
    gradients update the parameters as they are when it ends. A batch's gradients are thus
    stale by the updates of the batches that ended while it was in flight, and no update
    waits for another batch.
    """

    def __init__(
        self,
        *,
        name: str,
        group: str,
        workload: TrainingWorkload,
        dataset: Dataset,
        seed: int,
        device_flops: float,
        concurrent_batches: int,
        baton: Baton,
        recorder: Recorder,
        failures: PeerFailures,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.group = group
        self.workload = workload
        self.dataset = dataset
        self.device_flops = device_flops
        self.baton = baton
        self.recorder = recorder
        self.failures = failures
        self.clock = clock  # measured-window time
        self.model = TrainerModel(
            dataset.in_features, workload.model.hidden_dim, dataset.classes, workload.grid, seed=seed
        )  # kept across the peer's sessions, as a checkpoint on disk would be
        self.batches = torch.Generator().manual_seed(seed + 1)
        self.in_flight = [Replica(self.model) for _ in range(concurrent_batches)]
        self.session = asyncio.Event()  # set while the trainer's peer is up
        self.optimizer = make_optimizer(workload.optimizer.name, workload.optimizer.lr, self.model.params)
        self._client: MoEClient | None = None
        self._reported_bans = 0

    # ---- the peer's life (loop side) ------------------------------------------------------------

    def started(self, node: DHTNode) -> None:
        """The trainer's peer (re)joined: train through a fresh client on its node."""
        client = MoEClient(rpc=node.rpc, dht=node, bridge=self.baton)
        workload = self.workload
        attach_mixtures(
            self.in_flight,
            lambda: mixture_for(workload, client),
        )
        for batch in self.in_flight:
            assert batch.mixture is not None
            batch.mixture.stats.observer = self._expert_call
        self._client = client
        self._reported_bans = 0
        self.session.set()

    def stopped(self) -> None:
        self.session.clear()

    def finish(self) -> None:
        """The run is over: release loops waiting for the peer to come back."""
        self.session.set()

    def _expert_call(self, call: ExpertCall) -> None:
        """A remote expert call was judged (on the loop): its outcome and latency. A late call
        (dropped once every sample had its answers) is not the expert's failure."""
        now = self.clock()
        self.recorder.event("moe.expert_call", now, ok=call.ok, latency=call.seconds)
        if call.outcome in ("failed", "rejected"):
            self.recorder.count("moe.expert_failures", now, 1)
        if call.outcome == "rejected":
            self.recorder.count("moe.rejected", now, 1)

    # ---- training (trainer threads) -------------------------------------------------------------

    def train_until(self, end: float, slot: int) -> None:
        """Run batch ``slot``'s steps until measured-window time ``end``; runs in a baton thread.

        A step that raises what no remote failure explains is this peer's failure: it is
        recorded (see failures.py) and this batch's loop stops, as a crashed training thread would.
        """
        batch = self.in_flight[slot]
        while True:
            self.baton.run(self.session.wait())
            if self.clock() >= end or batch.mixture is None:
                return
            started = self.clock()
            try:
                self._step(batch)
            except Exception as error:
                self._record(started, None)
                self.failures.record(self.name, "a training step", error)
                return

    def _step(self, batch: Replica) -> None:
        x, y = self.dataset.batch(self.batches, self.workload.batch_size)
        started = self.clock()
        self._compute(1.0)  # local forward
        batch.load(self.model.params)
        try:
            loss, grads = batch.loss_and_grads(x, y)
        except STEP_FAILURES:
            self._record(started, None)
            return
        self._compute(2.0)  # local backward
        self.model.apply(grads, self.optimizer)
        self._record(started, loss.item())

    def _compute(self, passes: float) -> None:
        """Advance virtual time by the local layers' cost (``passes`` forward passes' worth)."""
        hidden = self.workload.model.hidden_dim
        per_sample = 2 * (self.dataset.in_features * hidden + hidden * sum(self.workload.grid))
        per_sample += 2 * hidden * self.dataset.classes
        seconds = passes * self.workload.batch_size * per_sample / self.device_flops
        self.baton.run(asyncio.sleep(seconds))

    def _record(self, started: float, loss: float | None) -> None:
        now = self.clock()
        self.recorder.event("moe.step", now, ok=loss is not None, latency=now - started)
        self.recorder.event(f"moe.step.{self.group}", now, ok=loss is not None, latency=now - started)
        if loss is not None:
            self.recorder.value("train.loss", now, loss)
        bans = self._client.bans if self._client is not None else 0
        if bans > self._reported_bans:
            self.recorder.count("moe.bans", now, bans - self._reported_bans)
        self._reported_bans = bans


def mixture_for(workload: TrainingWorkload, client: MoEClient) -> RemoteMixtureOfExperts:
    """The DMoE layer the scenario's `training` describes (the one real trainers build too)."""
    return make_mixture(
        client,
        hidden_dim=workload.model.hidden_dim,
        grid=workload.grid,
        expert=workload.model.expert,
        k_best=workload.k_best,
        k_min=workload.k_min,
        forward_timeout=workload.forward_timeout,
        backward_timeout=workload.backward_timeout,
    )
