"""Churn that starts in its steady state: initial sessions are residual lives, not fresh sessions.

With heavy-tailed sessions a lockstep start (every peer begins a fresh session together) sends a
burst of peers away first, because the many short sessions all end in the first minutes. A
stationary start draws what remains of a session in progress at a random moment, whose density
is (1 - F(x)) / E[S]; these tests check the draws against that law and the churn against its
steady rate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from hivemind_sim import Simulation
from hivemind_sim.swarms.churn import (
    ChurnModel,
    Distribution,
    Exponential,
    LogNormal,
    Pareto,
    Start,
    Weibull,
    start_churn,
)

DRAWS = 20_000
KS_LIMIT = 1.95 / math.sqrt(DRAWS)
"""Kolmogorov-Smirnov bound at the 0.1% level: a right law stays under it (the seed is fixed)."""


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _lognormal_residual(mu: float, sigma: float) -> Callable[[float], float]:
    mean = math.exp(mu + sigma**2 / 2)

    def cdf(x: float) -> float:
        z = (math.log(x) - mu) / sigma
        return _phi(z - sigma) + x * (1 - _phi(z)) / mean

    return cdf


def _pareto_residual(alpha: float, minimum: float) -> Callable[[float], float]:
    mean = alpha * minimum / (alpha - 1)

    def cdf(x: float) -> float:
        if x < minimum:
            return x / mean
        return (minimum + minimum**alpha * (x ** (1 - alpha) - minimum ** (1 - alpha)) / (1 - alpha)) / mean

    return cdf


RESIDUAL_CDFS: list[tuple[Distribution, Callable[[float], float]]] = [
    # F_e(x) = integral of the survival function from 0 to x, over the mean, in closed form
    (Exponential(mean=60.0), lambda x: 1 - math.exp(-x / 60)),
    # Weibull shape 1/2: F_e is the regularized gamma P(2, y) with y = sqrt(x / scale)
    (Weibull(shape=0.5, scale=600.0), lambda x: 1 - math.exp(-math.sqrt(x / 600)) * (1 + math.sqrt(x / 600))),
    # Weibull shape 2: P(1/2, y) with y = (x / scale)^2, which is erf(x / scale)
    (Weibull(shape=2.0, scale=600.0), lambda x: math.erf(x / 600)),
    (LogNormal(mu=math.log(1800), sigma=1.2), _lognormal_residual(math.log(1800), 1.2)),
    (Pareto(shape=1.5, minimum=300.0), _pareto_residual(1.5, 300.0)),
]


def ks_distance(samples: list[float], cdf: Callable[[float], float]) -> float:
    ordered = sorted(samples)
    n = len(ordered)
    return max(max(abs((i + 1) / n - cdf(x)), abs(i / n - cdf(x))) for i, x in enumerate(ordered))


@pytest.mark.parametrize(
    ("session", "cdf"),
    RESIDUAL_CDFS,
    ids=["exponential", "weibull-0.5", "weibull-2", "lognormal", "pareto-1.5"],
)
def test_residual_lives_follow_the_equilibrium_law(
    session: Distribution, cdf: Callable[[float], float]
) -> None:
    rng = random.Random(11)
    residuals = [session.sample_residual(rng) for _ in range(DRAWS)]
    assert ks_distance(residuals, cdf) < KS_LIMIT
    if not isinstance(session, Exponential):  # memoryless: its residual life is a fresh session
        fresh = [session.sample(rng) for _ in range(DRAWS)]
        assert ks_distance(fresh, cdf) > 5 * KS_LIMIT, "the test tells the two laws apart"


def test_pareto_sessions_of_infinite_mean_have_no_stationary_start() -> None:
    heavy = Pareto(shape=1.0, minimum=60.0)
    assert heavy.mean == math.inf
    with pytest.raises(ValueError, match="infinite mean"):
        ChurnModel(heavy, Exponential(60.0), start="stationary")
    assert ChurnModel(heavy, Exponential(60.0), start="lockstep").start == "lockstep"


PEERS, WINDOW = 5000, 30.0
SESSION = Weibull(shape=0.5, scale=600.0)  # mean 1200 s; most sessions short, a few very long


def departures(start: Start) -> list[tuple[float, str]]:
    """Who leaves when in the first ``WINDOW`` seconds of churn over ``PEERS`` peers all up at 0."""
    left: list[tuple[float, str]] = []
    with Simulation(seed=2) as sim:
        start_churn(
            sim,
            [f"peer-{i}" for i in range(PEERS)],
            ChurnModel(SESSION, Exponential(60.0), start=start),
            leave=lambda address, graceful: left.append((sim.now, address)),
            join=lambda address: None,
        )
        sim.env.run(until=WINDOW)
    return left


def test_a_stationary_start_has_no_burst_of_early_departures() -> None:
    steady = PEERS * WINDOW / SESSION.mean  # every up peer leaves at rate 1 / E[S] in the steady state
    stationary, lockstep = len(departures("stationary")), len(departures("lockstep"))
    assert stationary == pytest.approx(steady, rel=0.25)
    # lockstep: P(session < 30 s) = 1 - exp(-sqrt(30 / 600)) = 20% of the peers leave at once
    assert lockstep == pytest.approx(PEERS * (1 - math.exp(-math.sqrt(WINDOW / 600))), rel=0.1)
    assert lockstep > 5 * stationary


def test_lockstep_stays_the_default_of_direct_callers() -> None:
    """DHTSwarm.churn and the benchmarks build ChurnModel without `start`: their runs stay as they
    were, each peer's first session being the first draw of its own stream."""
    assert ChurnModel(SESSION, Exponential(60.0)).start == "lockstep"
    first = {f"peer-{i}": SESSION.sample(random.Random(f"2/churn/peer-{i}")) for i in range(PEERS)}
    first_leaves: dict[str, float] = {}
    for at, address in departures("lockstep"):
        first_leaves.setdefault(address, at)
    assert first_leaves == {address: at for address, at in first.items() if at < WINDOW}
