"""NormCheck: tells junk answers from honest ones by comparing experts that answered the same sample.

A misbehaving expert can answer finite values of the right shape that are nonsense. The layer
cannot know the true answer, but it asks up to ``k_best`` experts the same sample, and experts
trained on the same task answer with norms of one scale (a residual block's answer is close
to its input's). So, per sample, an answer whose norm exceeds ``factor`` times the median norm
of that sample's answers is rejected, once the sample holds at least ``min_answers`` answers; a
sample with fewer (other experts failed, or ``k_best`` is small) is judged against the median
of every answer in the batch instead, as samples of one batch have norms of one scale too, but
only when at least ``min_answers`` distinct experts answered in the batch: with two, nothing
says which of them is the junk one (two honest experts whose norms differ 10x were rejected in
turn, and the forward failed with both alive, found by the DMoE state machine). The
median is the lower one for an even count, so two junk answers of four are caught too; a
majority of junk is not (nothing relative can catch it), nor is junk of an honest norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NormCheck:
    """Which answers to reject; see the module docstring. ``factor`` is conservative by
    default: honest experts' answers to one sample differ in norm by a few times at most."""

    factor: float = 10.0
    min_answers: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise ValueError(f"NormCheck.factor must be a finite number > 1, got {self.factor!r}")
        if not 1 < self.factor < math.inf:
            raise ValueError(f"NormCheck.factor must be a finite number > 1, got {self.factor!r}")
        if type(self.min_answers) is not int or self.min_answers < 3:
            raise ValueError(f"NormCheck.min_answers must be an int >= 3, got {self.min_answers!r}")

    def outliers(self, norms: torch.Tensor, *, experts: int) -> torch.Tensor:
        """``norms``: [samples, answers], NaN where a sample has fewer answers, from ``experts``
        distinct experts in all; True where an answer is rejected. A median norm of 0 rejects
        nothing (no scale to judge by)."""
        given = ~norms.isnan()
        if given.sum() < self.min_answers or experts < self.min_answers:
            return torch.zeros_like(given)
        counts = given.sum(dim=1, keepdim=True)
        reference = torch.where(
            counts >= self.min_answers, norms.nanmedian(dim=1, keepdim=True).values, norms[given].median()
        )
        return (reference > 0) & (norms > self.factor * reference)
