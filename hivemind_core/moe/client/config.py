"""What a DMoE layer is and how it waits: the settings of :class:`RemoteMixtureOfExperts`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..uid import parse_uid
from .arguments import check_count, check_timeout
from .outliers import NormCheck

DEFAULT_MAX_SEARCHES = 3
"""Beam searches a forward tries (each avoiding the experts that just failed) before it gives up."""


@dataclass(frozen=True)
class MoEConfig:
    """Settings of one DMoE layer, checked when made (errors name the field)."""

    in_features: int
    """Size of the last input dimension, which the gate reads."""
    grid_size: Sequence[int]
    """Coordinates per grid dimension (stored as a tuple)."""
    uid_prefix: str
    """The grid's name: experts are ``<uid_prefix>.<c1>.<c2>...``."""
    k_best: int
    """Experts asked per sample (the best-scored alive ones)."""
    k_min: int = 1
    """Answers each sample needs; fewer after ``max_searches`` searches raise ExpertsUnavailable."""
    forward_timeout: float = 10.0
    """Seconds an expert has to answer a forward call; a server that misses it is banned."""
    backward_timeout: float = 20.0
    """Seconds an expert has to answer a backward call."""
    timeout_after_k_min: float = 1.0
    """Once every sample has ``k_min`` answers, seconds to wait at most for the others."""
    max_searches: int = DEFAULT_MAX_SEARCHES
    """Beam searches a forward tries, each avoiding the experts that just failed."""
    beam_size: int | None = None
    """Prefixes kept per sample and grid dimension (None: twice the experts searched for)."""
    output_shape: Sequence[int] | None = None
    """Shape of one sample's answer (stored as a tuple; None: the input's sample shape)."""
    answer_check: NormCheck | None = NormCheck()  # noqa: RUF009 (frozen, so safely shared)
    """How junk answers are told from the others (None: accept every finite answer)."""

    def __post_init__(self) -> None:
        for name in ("in_features", "k_best", "max_searches"):
            check_count(name, getattr(self, name))
        if self.beam_size is not None:
            check_count("beam_size", self.beam_size)
        if type(self.k_min) is not int or not 0 <= self.k_min <= self.k_best:
            raise ValueError(
                f"k_min must be an int with 0 <= k_min <= k_best={self.k_best}, got {self.k_min!r}"
            )
        grid = self.grid_size
        if isinstance(grid, str | bytes) or not isinstance(grid, Sequence) or not grid:
            raise ValueError(f"grid_size must be a non-empty sequence of ints >= 1, got {grid!r}")
        for d, size in enumerate(grid):
            check_count(f"grid_size[{d}]", size)
        object.__setattr__(self, "grid_size", tuple(grid))
        try:
            parse_uid(f"{self.uid_prefix}.0")
        except ValueError:
            raise ValueError(f"uid_prefix must be a grid name like 'ffn', got {self.uid_prefix!r}") from None
        shape = self.output_shape
        if shape is not None:
            if isinstance(shape, str | bytes) or not isinstance(shape, Sequence):
                raise ValueError(f"output_shape must be a sequence of ints >= 0, got {shape!r}")
            if not all(type(size) is int and size >= 0 for size in shape):
                raise ValueError(f"output_shape must be a sequence of ints >= 0, got {shape!r}")
            object.__setattr__(self, "output_shape", tuple(shape))
        for name in ("forward_timeout", "backward_timeout", "timeout_after_k_min"):
            check_timeout(name, getattr(self, name))
        if self.answer_check is not None and not isinstance(self.answer_check, NormCheck):
            raise ValueError(f"answer_check must be a NormCheck or None, got {self.answer_check!r}")
