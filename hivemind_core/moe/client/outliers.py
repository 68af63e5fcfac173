"""NormCheck: tells junk answers from honest ones by comparing experts that answered the same sample.

A misbehaving expert can answer finite values of the right shape that are nonsense. The layer
cannot know the true answer, but it asks up to ``k_best`` experts the same sample, and experts
trained on the same task answer with norms of one scale (a residual block's answer is close
to its input's). So, per sample, an answer whose norm exceeds ``factor`` times the median norm of that
sample's answers is rejected, once the sample holds at least ``min_answers`` answers. The
median is the lower one for an even count, so two junk answers of four are caught too.

A sample with fewer answers (other experts failed, or ``k_best`` is small) has no majority of
its own. Two answers that disagree by more than ``factor`` are told apart by the batch: the
larger is rejected if it also exceeds ``factor`` times the median of every answer in the batch,
and only when at least ``min_answers`` distinct experts answered in the batch (with two, nothing
says which of them is the junk one). Answers that agree are never rejected by the batch, nor is
a sample's only answer: different inputs may have norms of different scales (a small model's
answers to one batch were seen 10x apart, and the state machine caught the batch rejecting two
agreeing honest answers, banning both servers). What is not caught: a majority of junk (nothing
relative can catch it), junk of an honest norm, and junk that is a sample's only answer.
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
        own = norms.nanmedian(dim=1, keepdim=True).values
        smallest = norms.nan_to_num(math.inf).min(dim=1, keepdim=True).values
        batch = norms[given].median()
        judged_alone = (counts >= self.min_answers) & (own > 0) & (norms > self.factor * own)
        told_by_batch = (
            (counts >= 2)
            & (counts < self.min_answers)
            & (smallest > 0)
            & (batch > 0)
            & (norms > self.factor * smallest)
            & (norms > self.factor * batch)
        )
        return judged_alone | told_by_batch
