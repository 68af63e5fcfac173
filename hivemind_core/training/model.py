"""A trainer's own layers around a DMoE layer, and one asynchronous-SGD step through them.

The model is ``Linear -> relu -> RemoteMixtureOfExperts -> (+ residual) -> Linear``: the first
and last layers and the mixture's gate live with the trainer; the experts are remote.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..moe.client import REMOTE_FAILURES, ExpertsUnavailable, MoEClient, MoEConfig, RemoteMixtureOfExperts

STEP_FAILURES = (ExpertsUnavailable, *REMOTE_FAILURES)
"""What a training step may fail with when experts or the trainer's own peer go away."""


class TrainerModel:
    """The trainer's layers, initialized from ``seed`` alone (torch's global generator is not
    the trainer's: two trainers with one seed start alike wherever they run)."""

    def __init__(
        self, in_features: int, hidden_dim: int, classes: int, grid: list[int], *, seed: int
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.first = nn.Linear(in_features, hidden_dim)
        self.last = nn.Linear(hidden_dim, classes)
        self.gate = nn.Linear(hidden_dim, sum(grid))  # the mixture's gating
        with torch.no_grad():
            for layer in (self.first, self.last, self.gate):
                scale = math.sqrt(layer.in_features)
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / scale)
                layer.bias.zero_()
        self.params = [*self.first.parameters(), *self.gate.parameters(), *self.last.parameters()]

    def apply(self, grads: tuple[torch.Tensor | None, ...], optimizer: torch.optim.Optimizer) -> None:
        """One optimizer step with a replica's gradients, on the parameters as they are now."""
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


class Replica:
    """One batch in flight: copies of the trainer's layers that it computes with.

    A step loads the trainer's current parameters into them, runs forward and backward, and
    hands its gradients back. The optimizer updates the trainer's own parameters in place, so
    computing with them directly would let one batch's update change the weights another
    batch's pending backward still needs.
    """

    def __init__(self, model: TrainerModel) -> None:
        self.first, self.gate, self.last = (
            copy.deepcopy(layer) for layer in (model.first, model.gate, model.last)
        )
        self.params = [*self.first.parameters(), *self.gate.parameters(), *self.last.parameters()]
        self.mixture: RemoteMixtureOfExperts | None = None  # per session of the trainer's peer

    def load(self, params: list[nn.Parameter]) -> None:
        """Compute the next step with ``params`` as they are now."""
        with torch.no_grad():
            for replica, param in zip(self.params, params, strict=True):
                replica.copy_(param)

    def loss_and_grads(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        """Forward through the mixture and backward; raises one of ``STEP_FAILURES`` when too few
        experts answered."""
        assert self.mixture is not None
        hidden = torch.relu(self.first(x))
        loss = nn.functional.cross_entropy(self.last(self.mixture(hidden) + hidden), y)
        return loss, torch.autograd.grad(loss, self.params, allow_unused=True)


def make_mixture(
    client: MoEClient,
    *,
    hidden_dim: int,
    grid: Sequence[int],
    expert: str,
    k_best: int,
    k_min: int,
    forward_timeout: float,
    backward_timeout: float,
) -> RemoteMixtureOfExperts:
    """The DMoE layer a trainer trains through, in a scenario and on a real peer alike: once
    every sample has ``k_min`` answers, it waits for slower experts half a second at most (or
    the forward timeout, if shorter)."""
    config = MoEConfig(
        in_features=hidden_dim,
        grid_size=list(grid),
        uid_prefix=expert,
        k_best=k_best,
        k_min=k_min,
        forward_timeout=forward_timeout,
        backward_timeout=backward_timeout,
        timeout_after_k_min=min(0.5, forward_timeout),
    )
    return RemoteMixtureOfExperts(config, client=client)


def attach_mixtures(replicas: list[Replica], make: Callable[[], RemoteMixtureOfExperts]) -> None:
    """Give each replica a mixture from ``make``, gated by the replica's own gate copy, all
    sharing one beam searcher: one peer, one cache of the grid's alive experts, however many
    batches are in flight."""
    searcher = None
    for replica in replicas:
        mixture = make()
        mixture.proj = replica.gate
        searcher = mixture.searcher = searcher or mixture.searcher
        replica.mixture = mixture


def make_optimizer(name: str, lr: float, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """``sgd`` or ``adam`` over the trainer's own parameters."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r} (known: sgd, adam)")
