"""DMoE training inside a scenario: datasets, the trainer's model, and its step loop.

Each trainer peer trains ``Linear -> RemoteMixtureOfExperts -> Linear`` on its own batches
through the unmodified core client. Its steps run in threads under the deterministic baton,
and its own local layers take virtual time on the trainer's device (a slow trainer is slow).
The model and optimizer outlive the peer's downtime, as a checkpoint on disk would.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hivemind_core.dht import DHTNode
from hivemind_core.moe.client import REMOTE_FAILURES, ExpertsUnavailable, MoEClient, RemoteMixtureOfExperts

from ..swarms.baton import Baton
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


class Trainer:
    """One trainer peer: its model, optimizer and batches, and the loop that trains them.

    ``concurrent_batches`` loops share the model; each computes its gradients with
    ``torch.autograd.grad`` and applies them at once, so batches in flight never mix their
    gradients (asynchronous SGD, as in the seed system).
    """

    def __init__(
        self,
        *,
        group: str,
        workload: TrainingWorkload,
        dataset: Dataset,
        seed: int,
        device_flops: float,
        baton: Baton,
        recorder: Recorder,
        clock: Callable[[], float],
    ) -> None:
        self.group = group
        self.workload = workload
        self.dataset = dataset
        self.device_flops = device_flops
        self.baton = baton
        self.recorder = recorder
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
        self.mixture: RemoteMixtureOfExperts | None = None
        self.session = asyncio.Event()  # set while the trainer's peer is up
        self.params = [*self.first.parameters(), *self.gate.parameters(), *self.last.parameters()]
        self.optimizer = _optimizer(workload, self.params)
        self._reported = (0, 0, 0)  # expert calls, expert failures, bans already recorded

    # ---- the peer's life (loop side) ------------------------------------------------------------

    def started(self, node: DHTNode) -> None:
        """The trainer's peer (re)joined: train through a fresh client on its node."""
        client = MoEClient(rpc=node.rpc, dht=node, bridge=self.baton)
        workload = self.workload
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
        mixture.proj = self.gate
        self.mixture = mixture
        self._reported = (0, 0, 0)
        self.session.set()

    def stopped(self) -> None:
        self.session.clear()

    def finish(self) -> None:
        """The run is over: release loops waiting for the peer to come back."""
        self.session.set()

    # ---- training (trainer thread) ----------------------------------------------------------------

    def train_until(self, end: float) -> None:
        """Run steps until measured-window time ``end``; runs in a baton thread."""
        while True:
            self.baton.run(self.session.wait())
            if self.clock() >= end or self.mixture is None:
                return
            self._step()

    def _step(self) -> None:
        mixture = self.mixture
        assert mixture is not None
        x, y = self.dataset.batch(self.batches, self.workload.batch_size)
        started = self.clock()
        self._compute(1.0)  # local forward
        try:
            hidden = torch.relu(self.first(x))
            loss = nn.functional.cross_entropy(self.last(mixture(hidden) + hidden), y)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        except STEP_FAILURES:
            self._record(mixture, started, None)
            return
        self._compute(2.0)  # local backward
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._record(mixture, started, loss.item())

    def _compute(self, passes: float) -> None:
        """Advance virtual time by the local layers' cost (``passes`` forward passes' worth)."""
        hidden = self.workload.model.hidden_dim
        per_sample = 2 * (self.dataset.in_features * hidden + hidden * sum(self.workload.grid))
        per_sample += 2 * hidden * self.dataset.classes
        seconds = passes * self.workload.batch_size * per_sample / self.device_flops
        self.baton.run(asyncio.sleep(seconds))

    def _record(self, mixture: RemoteMixtureOfExperts, started: float, loss: float | None) -> None:
        now = self.clock()
        self.recorder.event("moe.step", now, ok=loss is not None, latency=now - started)
        self.recorder.event(f"moe.step.{self.group}", now, ok=loss is not None, latency=now - started)
        if loss is not None:
            self.recorder.value("train.loss", now, loss)
        stats = mixture.stats
        calls = stats.forward_calls + stats.backward_calls
        failures = stats.forward_failures + stats.backward_failures
        bans = mixture.client.bans
        before_calls, before_failures, before_bans = self._reported
        new_calls, new_failures, new_bans = (
            calls - before_calls,
            failures - before_failures,
            bans - before_bans,
        )
        self._reported = (calls, failures, bans)
        for ok in (True, False):
            for _ in range(new_calls - new_failures if ok else new_failures):
                self.recorder.event("moe.expert_call", now, ok=ok)
        if new_failures:
            self.recorder.count("moe.expert_failures", now, new_failures)
        if new_bans:
            self.recorder.count("moe.bans", now, new_bans)


def _optimizer(workload: TrainingWorkload, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if workload.optimizer.name == "sgd":
        return torch.optim.SGD(params, lr=workload.optimizer.lr)
    return torch.optim.Adam(params, lr=workload.optimizer.lr)
