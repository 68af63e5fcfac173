"""Distributions in a scenario file, told apart by their ``distribution`` key, each with a seeded
``sample``: ``Varying[...]`` for peer attributes (a plain quantity means a constant),
``ChurnTime`` for session and downtime lengths (convertible to ``swarms.churn`` classes), and
``Popularity`` for which DHT key a request names. ``FrozenModel``, the base of every scenario
model, lives here, below the schema that builds on it.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Generic, Literal, Self, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from .units import PositiveDuration


class FrozenModel(BaseModel):
    """Base of every scenario model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


Q = TypeVar("Q")


class Constant(FrozenModel, Generic[Q]):
    """The same value for every peer; written as the plain quantity (`20Mbit/s`)."""

    distribution: Literal["constant"] = "constant"
    """Selects this distribution."""
    value: Q
    """The value."""

    def sample(self, rng: random.Random) -> float:
        return self.value  # type: ignore[return-value]

    @model_serializer(mode="wrap")
    def _plain(self, handler: SerializerFunctionWrapHandler) -> object:
        return handler(self)["value"]


class LogNormal(FrozenModel, Generic[Q]):
    """Log-normal around a median: half the peers below it, a long tail above."""

    distribution: Literal["lognormal"]
    """Selects this distribution."""
    median: Q
    """The median value (> 0)."""
    sigma: float = Field(ge=0)
    """Standard deviation of the value's natural logarithm (0.5: a quarter of peers below ~0.7x median)."""

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.median), self.sigma)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _median_positive(self) -> Self:
        if not self.median > 0:  # type: ignore[operator]
            raise ValueError("a log-normal median must be > 0")
        return self


class Uniform(FrozenModel, Generic[Q]):
    """Uniform between two bounds."""

    distribution: Literal["uniform"]
    """Selects this distribution."""
    low: Q
    """Lower bound."""
    high: Q
    """Upper bound (>= low)."""

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.high < self.low:  # type: ignore[operator]
            raise ValueError("uniform needs low <= high")
        return self


class Choice(FrozenModel, Generic[Q]):
    """One of a few values, optionally weighted (a mix of hardware classes)."""

    distribution: Literal["choice"]
    """Selects this distribution."""
    values: tuple[Q, ...] = Field(min_length=1)
    """The values to pick from."""
    weights: tuple[float, ...] | None = None
    """Relative weights, one per value (>= 0, not all 0); default: equally likely."""

    def sample(self, rng: random.Random) -> float:
        return rng.choices(self.values, self.weights)[0]  # type: ignore[return-value]

    @model_validator(mode="after")
    def _weights_match(self) -> Self:
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError(f"{len(self.weights)} weights for {len(self.values)} values")
            if min(self.weights) < 0 or not sum(self.weights) > 0:
                raise ValueError("weights must be >= 0 and not all 0")
        return self


def _constant_if_scalar(quantity: Any, parse: Callable[[object], float]) -> Callable[[object], object]:
    constant = Constant[quantity]

    def wrap(value: object) -> object:
        if isinstance(value, Mapping | BaseModel):
            return value
        # parsed here so that errors name the key, not `constant.value`; built without parsing the
        # number again (10 from `10s` must not be checked as a bare 10)
        return constant.model_construct(value=parse(value))

    return wrap


class _VaryingFactory:
    """``Varying[Bandwidth]``: a quantity, or a distribution of it drawn once per peer."""

    def __getitem__(self, quantity: Any) -> Any:
        parse = next(m.func for m in get_args(quantity)[1:] if isinstance(m, BeforeValidator))
        union = Annotated[
            Constant[quantity] | LogNormal[quantity] | Uniform[quantity] | Choice[quantity],
            Field(discriminator="distribution"),
        ]
        return Annotated[union, BeforeValidator(_constant_if_scalar(quantity, parse))]


Varying = _VaryingFactory()


# -- churn: how long a peer stays up (session) or down (downtime) --------------------------------------


def _churn_module() -> Any:
    from ...swarms import churn  # lazy: the format is read without loading the simulator

    return churn


class _ChurnTime(FrozenModel):
    """A session or downtime distribution: draws come from the churn model it stands for."""

    def sample(self, rng: random.Random) -> float:
        return self.to_churn().sample(rng)

    def to_churn(self) -> Any:
        raise NotImplementedError


class ExponentialTime(_ChurnTime):
    """Memoryless: a peer is as likely to leave now as after an hour."""

    distribution: Literal["exponential"]
    """Selects this distribution."""
    mean: PositiveDuration
    """Mean length."""

    def to_churn(self) -> Any:
        return _churn_module().Exponential(mean=self.mean)


class WeibullTime(_ChurnTime):
    """Weibull; shape < 1 gives many short sessions and a few very long ones, as measured in P2P networks."""

    distribution: Literal["weibull"]
    """Selects this distribution."""
    shape: float = Field(gt=0)
    """Shape k (> 0; < 1: heavy tail, 1: exponential)."""
    median: PositiveDuration | None = None
    """Median length; give either this or `scale`."""
    scale: PositiveDuration | None = None
    """Scale lambda (the 63rd percentile); give either this or `median`."""

    @property
    def scale_seconds(self) -> float:
        """The scale, from the median when that is what was given: median = scale * ln(2)^(1/shape)."""
        if self.scale is not None:
            return self.scale
        return self.median / math.log(2) ** (1 / self.shape)  # type: ignore[operator]

    def to_churn(self) -> Any:
        return _churn_module().Weibull(shape=self.shape, scale=self.scale_seconds)

    @model_validator(mode="after")
    def _median_or_scale(self) -> Self:
        if (self.median is None) == (self.scale is None):
            raise ValueError("weibull needs exactly one of `median` and `scale`")
        return self


class LogNormalTime(_ChurnTime):
    """Log-normal around a median length."""

    distribution: Literal["lognormal"]
    """Selects this distribution."""
    median: PositiveDuration
    """Median length."""
    sigma: float = Field(ge=0)
    """Standard deviation of the length's natural logarithm."""

    def to_churn(self) -> Any:
        return _churn_module().LogNormal(mu=math.log(self.median), sigma=self.sigma)


class ParetoTime(_ChurnTime):
    """Pareto: never shorter than `minimum`, with a power-law tail."""

    distribution: Literal["pareto"]
    """Selects this distribution."""
    shape: float = Field(gt=0)
    """Tail index alpha (> 0; <= 1: infinite mean)."""
    minimum: PositiveDuration
    """Shortest length."""

    def to_churn(self) -> Any:
        return _churn_module().Pareto(shape=self.shape, minimum=self.minimum)


ChurnTime = Annotated[
    ExponentialTime | WeibullTime | LogNormalTime | ParetoTime, Field(discriminator="distribution")
]
"""A distribution of session or downtime lengths, in seconds."""


# -- key popularity: which of the DHT workload's keys a request names ----------------------------------


class ZipfPopularity(FrozenModel):
    """Key i (from 0) is requested with weight 1 / (i + 1)^exponent: a few hot keys."""

    distribution: Literal["zipf"]
    """Selects this distribution."""
    exponent: float = Field(ge=0)
    """Skew (0: uniform; ~1: web-like popularity)."""

    def sampler(self, keys: int) -> Callable[[random.Random], int]:
        """A function drawing key indices in [0, keys) (the cumulative weights are computed once)."""
        cumulative = list(itertools.accumulate((i + 1) ** -self.exponent for i in range(keys)))
        total = cumulative[-1]
        return lambda rng: min(bisect.bisect_right(cumulative, rng.random() * total), keys - 1)

    def sample(self, rng: random.Random, keys: int) -> int:
        return self.sampler(keys)(rng)


class UniformPopularity(FrozenModel):
    """Every key equally likely."""

    distribution: Literal["uniform"]
    """Selects this distribution."""

    def sampler(self, keys: int) -> Callable[[random.Random], int]:
        return lambda rng: rng.randrange(keys)

    def sample(self, rng: random.Random, keys: int) -> int:
        return rng.randrange(keys)


Popularity = Annotated[ZipfPopularity | UniformPopularity, Field(discriminator="distribution")]
"""How requests spread over the keys."""
