"""Churn: peers that come and go, with sessions and downtimes drawn from distributions.

Each churning peer is a simpy process: stay up for a session, leave (crash, or say goodbye
with probability ``graceful_fraction``), stay down, come back, and so on. The callbacks it
calls run inside the simulation and may start asyncio work on ``sim.loop``.

Where churn starts matters with heavy tails. In ``lockstep`` every peer begins a fresh session
at the start, so a Weibull shape of 0.5 sends a burst of peers away in the first minutes (the
short sessions all end together) before the swarm settles. A ``stationary`` start joins the
process as if it had run forever: each peer's first session is the remaining life of a session
in progress at a random moment (the renewal process's equilibrium residual), so departures
leave at their steady rate from the first second.
"""

from __future__ import annotations

import abc
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import simpy

from ..world.simulation import Simulation

Start = Literal["stationary", "lockstep"]
"""How the first sessions begin: remaining lives of sessions in progress, or fresh sessions."""


class Distribution(abc.ABC):
    """A distribution of durations in seconds."""

    mean: float
    """The mean length (``inf`` for a Pareto tail of shape <= 1: then there is no steady state)."""

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> float: ...

    @abc.abstractmethod
    def sample_length_biased(self, rng: random.Random) -> float:
        """A length drawn with density x f(x) / E[X]: the length of the session in progress at a
        random moment (long sessions cover more moments)."""

    def sample_residual(self, rng: random.Random) -> float:
        """What remains of the session in progress at a random moment: density (1 - F(x)) / E[X].

        A uniform point of the length-biased session in progress: exact, with no numerical
        inversion, for every distribution with a finite mean.
        """
        length = self.sample_length_biased(rng)
        return rng.random() * length


@dataclass(frozen=True)
class Exponential(Distribution):
    mean: float

    def sample(self, rng: random.Random) -> float:
        return rng.expovariate(1 / self.mean)

    def sample_length_biased(self, rng: random.Random) -> float:
        return rng.gammavariate(2.0, self.mean)


@dataclass(frozen=True)
class Weibull(Distribution):
    shape: float
    scale: float

    def sample(self, rng: random.Random) -> float:
        return rng.weibullvariate(self.scale, self.shape)

    @property
    def mean(self) -> float:
        return self.scale * math.gamma(1 + 1 / self.shape)

    def sample_length_biased(self, rng: random.Random) -> float:
        # with G = (X / scale)^shape, x f(x) dx is proportional to G^(1/shape) e^-G dG: Gamma(1 + 1/shape)
        return self.scale * rng.gammavariate(1 + 1 / self.shape, 1.0) ** (1 / self.shape)


@dataclass(frozen=True)
class LogNormal(Distribution):
    mu: float
    sigma: float

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.sigma)

    @property
    def mean(self) -> float:
        return math.exp(self.mu + self.sigma**2 / 2)

    def sample_length_biased(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu + self.sigma**2, self.sigma)


@dataclass(frozen=True)
class Pareto(Distribution):
    shape: float
    minimum: float

    def sample(self, rng: random.Random) -> float:
        return self.minimum * rng.paretovariate(self.shape)

    @property
    def mean(self) -> float:
        return self.shape * self.minimum / (self.shape - 1) if self.shape > 1 else math.inf

    def sample_length_biased(self, rng: random.Random) -> float:
        if self.shape <= 1:
            raise ValueError(f"a Pareto shape of {self.shape} (<= 1) has an infinite mean: no steady state")
        return self.minimum * rng.paretovariate(self.shape - 1)


@dataclass(frozen=True)
class ChurnModel:
    session: Distribution
    downtime: Distribution
    graceful_fraction: float = 0.0
    start: Start = "lockstep"
    """`stationary`: each peer's first session is a residual life; `lockstep`: a fresh session."""

    def __post_init__(self) -> None:
        if not 0 <= self.graceful_fraction <= 1:
            raise ValueError(f"graceful_fraction must be in [0, 1], got {self.graceful_fraction}")
        if self.start not in ("stationary", "lockstep"):
            raise ValueError(f"start must be `stationary` or `lockstep`, got {self.start!r}")
        if self.start == "stationary" and not math.isfinite(self.session.mean):
            raise ValueError(f"sessions of infinite mean ({self.session}) have no steady state to start in")

    def first_session(self, rng: random.Random) -> float:
        """The session a peer is in when churn starts: a residual life, or a fresh session."""
        return self.session.sample_residual(rng) if self.start == "stationary" else self.session.sample(rng)


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
        session = model.first_session(rng)
        while True:
            yield env.timeout(session)
            if env.now >= until:
                return
            leave(address, rng.random() < model.graceful_fraction)
            yield env.timeout(model.downtime.sample(rng))
            if env.now >= until:
                return
            join(address)
            session = model.session.sample(rng)

    return [sim.env.process(lifecycle(a, sim.random(f"{stream}/{a}"))) for a in addresses]
