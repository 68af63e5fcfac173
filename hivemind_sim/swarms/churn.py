"""Churn: peers that come and go, with sessions and downtimes drawn from distributions.

Each churning peer is a simpy process: stay up for a session, leave (crash, or say goodbye
with probability ``graceful_fraction``), stay down, come back, and so on. The callbacks it
calls run inside the simulation and may start asyncio work on ``sim.loop``.
"""

from __future__ import annotations

import abc
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import simpy

from ..world.simulation import Simulation


class Distribution(abc.ABC):
    """A distribution of durations in seconds."""

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> float: ...


@dataclass(frozen=True)
class Exponential(Distribution):
    mean: float

    def sample(self, rng: random.Random) -> float:
        return rng.expovariate(1 / self.mean)


@dataclass(frozen=True)
class Weibull(Distribution):
    shape: float
    scale: float

    def sample(self, rng: random.Random) -> float:
        return rng.weibullvariate(self.scale, self.shape)


@dataclass(frozen=True)
class LogNormal(Distribution):
    mu: float
    sigma: float

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.sigma)


@dataclass(frozen=True)
class Pareto(Distribution):
    shape: float
    minimum: float

    def sample(self, rng: random.Random) -> float:
        return self.minimum * rng.paretovariate(self.shape)


@dataclass(frozen=True)
class ChurnModel:
    session: Distribution
    downtime: Distribution
    graceful_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.graceful_fraction <= 1:
            raise ValueError(f"graceful_fraction must be in [0, 1], got {self.graceful_fraction}")


Leave = Callable[[str, bool], None]
"""Called with (address, graceful) when a peer leaves."""
Join = Callable[[str], None]
"""Called with the address when a peer comes back."""


def start_churn(
    sim: Simulation,
    addresses: Iterable[str],
    model: ChurnModel,
    *,
    leave: Leave,
    join: Join,
    until: float = math.inf,
    stream: str = "churn",
) -> list[simpy.Process]:
    """Start one churn process per address; each stops for good at virtual time ``until``."""

    def lifecycle(address: str, rng: random.Random):  # a simpy process
        env = sim.env
        while True:
            yield env.timeout(model.session.sample(rng))
            if env.now >= until:
                return
            leave(address, rng.random() < model.graceful_fraction)
            yield env.timeout(model.downtime.sample(rng))
            if env.now >= until:
                return
            join(address)

    return [sim.env.process(lifecycle(a, sim.random(f"{stream}/{a}"))) for a in addresses]
