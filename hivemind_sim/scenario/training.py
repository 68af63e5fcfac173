"""DMoE training inside a scenario: datasets, the trainer's model, and its step loop.

Each trainer peer trains ``Linear -> RemoteMixtureOfExperts -> Linear`` on its own batches
through the unmodified core client. Its steps run in threads under the deterministic baton,
and its own local layers take virtual time on the trainer's device (a slow trainer is slow).
The model and optimizer outlive the peer's downtime, as a checkpoint on disk would.
"""

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hivemind_core.dht import DHTNode
from hivemind_core.moe.client import REMOTE_FAILURES, ExpertsUnavailable, MoEClient, RemoteMixtureOfExperts
from hivemind_core.moe.client.stats import ExpertCall

from ..swarms.baton import Baton
from .failures import PeerFailures
from .metrics import Recorder
from .schema import TrainingWorkload

STEP_FAILURES = (ExpertsUnavailable, *REMOTE_FAILURES)
"""What a training step may fail with when experts or the trainer's own peer go away."""


@dataclass(frozen=True)
class Dataset:
    """A classification task held in memory; batches are drawn with a trainer's generator."""

    features: torch.Tensor
    labels: torch.Tensor
    classes: int

    @property
    def in_features(self) -> int:
        return self.features.shape[1]

    def batch(self, generator: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, len(self.labels), (size,), generator=generator)
        return self.features[rows], self.labels[rows]


def make_dataset(kind: str, hidden_dim: int, *, seed: int) -> Dataset:
    """``synthetic``: the label is the argmax of the first four features of a Gaussian input;
    ``digits``: scikit-learn's bundled 8x8 digits, standardized (10 classes)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "synthetic":
        features = torch.randn(4096, hidden_dim, generator=generator)
        return Dataset(features, features[:, :4].argmax(dim=1), classes=4)
    if kind == "digits":
        try:
            from sklearn.datasets import load_digits
        except ModuleNotFoundError:
            raise RuntimeError(
                "dataset `digits` needs scikit-learn: pip install 'hivemind-sim[examples]'"
            ) from None
        digits = load_digits()
        features = torch.tensor(digits.data, dtype=torch.float32)
        features = (features - features.mean(0)) / (features.std(0) + 1e-6)
        return Dataset(features, torch.tensor(digits.target), classes=10)
    raise ValueError(f"unknown dataset {kind!r}")


class _Batch:
    """One batch in flight: replicas of the trainer's layers that it computes with.

    A step loads the trainer's current parameters into them, runs forward and backward, and
    hands its gradients back. The optimizer updates the trainer's own parameters in place, so
    computing with them directly would let one batch's update change the weights another
    batch's pending backward still needs.
    """

    def __init__(self, first: nn.Linear, gate: nn.Linear, last: nn.Linear) -> None:
        self.first, self.gate, self.last = (copy.deepcopy(layer) for layer in (first, gate, last))
        self.params = [*self.first.parameters(), *self.gate.parameters(), *self.last.parameters()]
        self.mixture: RemoteMixtureOfExperts | None = None  # per session of the trainer's peer

    def load(self, params: list[nn.Parameter]) -> None:
        """Compute the next step with ``params`` as they are now."""
        with torch.no_grad():
            for replica, param in zip(self.params, params, strict=True):
                replica.copy_(param)


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
        torch_seed = torch.Generator().manual_seed(seed)
        hidden = workload.model.hidden_dim
        self.first = nn.Linear(dataset.in_features, hidden)
        self.last = nn.Linear(hidden, dataset.classes)
        self.gate = nn.Linear(hidden, sum(workload.grid))  # the mixture's gating, kept across sessions
        with torch.no_grad():  # from the trainer's seed: torch's global generator is not ours
            for layer in (self.first, self.last, self.gate):
                scale = math.sqrt(layer.in_features)
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=torch_seed) / scale)
                layer.bias.zero_()
        self.batches = torch.Generator().manual_seed(seed + 1)
        self.in_flight = [_Batch(self.first, self.gate, self.last) for _ in range(concurrent_batches)]
        self.session = asyncio.Event()  # set while the trainer's peer is up
        self.params = [*self.first.parameters(), *self.gate.parameters(), *self.last.parameters()]
        self.optimizer = _optimizer(workload, self.params)
        self._client: MoEClient | None = None
        self._reported_bans = 0

    # ---- the peer's life (loop side) ------------------------------------------------------------

    def started(self, node: DHTNode) -> None:
        """The trainer's peer (re)joined: train through a fresh client on its node."""
        client = MoEClient(rpc=node.rpc, dht=node, bridge=self.baton)
        workload = self.workload
        searcher = None
        for batch in self.in_flight:
            mixture = RemoteMixtureOfExperts(
                in_features=workload.model.hidden_dim,
                grid_size=workload.grid,
                uid_prefix=workload.model.expert,
                client=client,
                k_best=workload.k_best,
                k_min=workload.k_min,
                forward_timeout=workload.forward_timeout,
                backward_timeout=workload.backward_timeout,
                timeout_after_k_min=min(0.5, workload.forward_timeout),
            )
            mixture.proj = batch.gate
            # one peer, one cache of the grid's alive experts, however many batches are in flight
            searcher = mixture.searcher = searcher or mixture.searcher
            mixture.stats.observer = self._expert_call
            batch.mixture = mixture
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
                self._step(batch, batch.mixture)
            except Exception as error:
                self._record(started, None)
                self.failures.record(self.name, "a training step", error)
                return

    def _step(self, batch: _Batch, mixture: RemoteMixtureOfExperts) -> None:
        x, y = self.dataset.batch(self.batches, self.workload.batch_size)
        started = self.clock()
        self._compute(1.0)  # local forward
        batch.load(self.params)
        try:
            hidden = torch.relu(batch.first(x))
            loss = nn.functional.cross_entropy(batch.last(mixture(hidden) + hidden), y)
            grads = torch.autograd.grad(loss, batch.params, allow_unused=True)
        except STEP_FAILURES:
            self._record(started, None)
            return
        self._compute(2.0)  # local backward
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
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


def _optimizer(workload: TrainingWorkload, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if workload.optimizer.name == "sgd":
        return torch.optim.SGD(params, lr=workload.optimizer.lr)
    return torch.optim.Adam(params, lr=workload.optimizer.lr)
