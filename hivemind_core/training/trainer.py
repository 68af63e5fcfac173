"""A real peer's trainer: the simulator's model and step, on threads, in wall-clock time.

``batches_in_flight`` threads each run steps on their own replica of the model, as the
simulated trainers do: a batch computes with the parameters as they were when it started and
its gradients update them as they are when it ends (asynchronous SGD). A lock serializes only
the short parts that touch the shared model (loading parameters, the optimizer's step).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..dht import DHTNode
from ..moe.client import MoEClient, RemoteMixtureOfExperts
from ..moe.client.config import DEFAULT_MAX_SEARCHES as MAX_SEARCHES
from ..moe.client.stats import ExpertCall
from .model import STEP_FAILURES, Replica, TrainerModel, attach_mixtures, make_mixture, make_optimizer
from .tasks import make_dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """What a real trainer learns and how; the names are the scenario schema's `training` keys."""

    dataset: str = "synthetic"
    hidden_dim: int = 64
    expert: str = "ffn"
    """The grid's UID prefix (the expert servers' `--experts` patterns start with it)."""
    grid: tuple[int, ...] = (4, 4)
    k_best: int = 4
    k_min: int = 1
    batch_size: int = 32
    batches_in_flight: int = 1
    optimizer: str = "adam"
    lr: float = 1e-3
    forward_timeout: float = 10.0
    backward_timeout: float = 20.0
    seed: int = 0
    device: str = "cpu"

    @property
    def longest_step(self) -> float:
        """A step's worst case: every search round (the layer's default ``max_searches``) waits
        out the forward timeout, then the backward waits out its own."""
        return MAX_SEARCHES * self.forward_timeout + self.backward_timeout


@dataclass
class TrainingStats:
    """What the trainer did so far (read from any thread: ints and floats, replaced whole)."""

    steps: int = 0
    failed_steps: int = 0
    expert_failures: int = 0
    longest_step: float = 0.0
    recent_losses: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=20))
    answering: dict[str, float] = field(default_factory=dict)
    """Expert UID -> when it last answered (wall-clock seconds)."""

    @property
    def loss(self) -> float:
        """Mean loss of the last 20 successful steps; NaN before the first."""
        losses = list(self.recent_losses)
        return sum(losses) / len(losses) if losses else math.nan

    def experts_answering(self, within: float) -> int:
        """Experts that answered within the last ``within`` seconds."""
        since = time.monotonic() - within
        return sum(1 for at in list(self.answering.values()) if at >= since)


class Trainer:
    """Trains :class:`TrainerModel` through a DMoE layer over ``node``; see the module docstring."""

    def __init__(
        self, node: DHTNode, config: TrainingConfig, client: MoEClient, *, metrics: Any = None
    ) -> None:
        """``metrics``: a :class:`hivemind_core.prometheus.PeerMetrics` to report steps and
        expert calls to, or None."""
        self.node = node
        self.metrics = metrics
        self.config = config
        self.client = client
        self.dataset = make_dataset(config.dataset, config.hidden_dim, seed=config.seed)
        self.device = torch.device(config.device)
        self.model = TrainerModel(
            self.dataset.in_features,
            config.hidden_dim,
            self.dataset.classes,
            list(config.grid),
            seed=config.seed,
        )
        for layer in (self.model.first, self.model.gate, self.model.last):
            layer.to(self.device)
        self.replicas = [Replica(self.model) for _ in range(config.batches_in_flight)]
        attach_mixtures(self.replicas, self._mixture)
        self.optimizer = make_optimizer(config.optimizer, config.lr, self.model.params)
        self.batches = torch.Generator().manual_seed(config.seed + 1)
        self.stats = TrainingStats()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = 0  # steps begun, successful or not

    def _mixture(self) -> RemoteMixtureOfExperts:
        config = self.config
        mixture = make_mixture(
            self.client,
            hidden_dim=config.hidden_dim,
            grid=config.grid,
            expert=config.expert,
            k_best=config.k_best,
            k_min=config.k_min,
            forward_timeout=config.forward_timeout,
            backward_timeout=config.backward_timeout,
        )
        mixture.stats.observer = self._expert_call
        return mixture

    def _expert_call(self, call: ExpertCall) -> None:
        if self.metrics is not None:
            self.metrics.expert_call(call.outcome, call.seconds)
        if call.outcome == "answered":
            self.stats.answering[call.uid] = time.monotonic()
        elif call.outcome in ("failed", "rejected"):
            self.stats.expert_failures += 1

    async def run(self, *, steps: int | None = None) -> None:
        """Train until :meth:`stop` (or ``steps`` steps in all); returns once every batch's thread
        has finished its step in progress."""
        loop = asyncio.get_running_loop()
        # its own threads, one per batch: asyncio's default pool has a handful (min(32, CPUs + 4)),
        # so more batches than that would wait in its queue without a word
        pool = ThreadPoolExecutor(max_workers=len(self.replicas), thread_name_prefix="trainer-batch")
        threads = [loop.run_in_executor(pool, self._train, replica, steps) for replica in self.replicas]
        try:
            await asyncio.gather(*threads)
        finally:
            self._stopping.set()
            await asyncio.gather(*threads, return_exceptions=True)
            pool.shutdown(wait=False)

    def stop(self) -> None:
        """Let each batch finish its step in progress, then end :meth:`run`."""
        self._stopping.set()

    def _train(self, replica: Replica, steps: int | None) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if steps is not None and self._started >= steps:
                    return
                self._started += 1
            self._step(replica)

    def _step(self, replica: Replica) -> None:
        with self._lock:
            x, y = self.dataset.batch(self.batches, self.config.batch_size)
            replica.load(self.model.params)
        started = time.monotonic()
        try:
            loss, grads = replica.loss_and_grads(x.to(self.device), y.to(self.device))
        except STEP_FAILURES as error:
            logger.debug("a step failed: %s", error)  # counted in the status line
            self._ended(started, None)
            return
        with self._lock:
            self.model.apply(grads, self.optimizer)
        self._ended(started, loss.item())

    def _ended(self, started: float, loss: float | None) -> None:
        took = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.step(took, loss)
        stats = self.stats
        with self._lock:
            stats.longest_step = max(stats.longest_step, took)
            if loss is None:
                stats.failed_steps += 1
            else:
                stats.steps += 1
                stats.recent_losses.append(loss)

    def status(self, within: float) -> str:
        """One line: peers known, experts answering lately, steps, loss, failures."""
        stats = self.stats
        return (
            f"peers {len(self.node.routing_table)}, experts answering {stats.experts_answering(within)}, "
            f"steps {stats.steps} ({stats.failed_steps} failed), loss {stats.loss:.4f}, "
            f"expert failures {stats.expert_failures}, longest step {stats.longest_step:.2f} s"
        )
