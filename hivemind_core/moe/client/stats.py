"""Counters a DMoE layer keeps about its remote work, so failures are visible, not just logged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_TRACKED_EXPERTS = 1024
"""Per-expert entries kept (the least recently failing are forgotten first): expert UIDs come
from the DHT, so a hostile peer could otherwise grow the table without bound."""


Outcome = Literal["answered", "failed", "rejected", "late"]


@dataclass(frozen=True, slots=True)
class ExpertCall:
    """How one expert call ended, after ``seconds``: ``answered`` (its answer was accepted),
    ``failed`` (an error, a NaN or malformed answer, or no answer by the full timeout, with the
    time it was waited for), ``rejected`` (a finite answer judged junk next to the other
    experts' answers, see ``outliers.py``) or ``late`` (still working when the layer stopped
    waiting, ``timeout_after_k_min`` after every sample had ``k_min`` answers: slow, not
    failed)."""

    kind: Literal["forward", "backward"]
    uid: str
    endpoint: str
    outcome: Outcome
    seconds: float

    @property
    def ok(self) -> bool:
        return self.outcome == "answered"


@dataclass
class MixtureStats:
    """What a :class:`RemoteMixtureOfExperts` did: calls, failures and searches since creation.

    ``forward_calls``/``backward_calls`` count expert calls (one per chosen expert and round),
    ``searches`` beam searches, ``unavailable`` forwards that raised ``ExpertsUnavailable``;
    ``rejected`` forward answers judged junk (also counted in ``forward_failures``), ``late``
    calls still running when the layer stopped waiting (not failures);
    ``expert_failures`` maps an expert's UID to its failed calls (forward and backward).
    ``observer``, when set, hears every call's outcome and latency as it ends, for metrics
    that need more than totals (a latency distribution, a timeline of failures).
    """

    forward_calls: int = 0
    forward_failures: int = 0
    backward_calls: int = 0
    backward_failures: int = 0
    searches: int = 0
    unavailable: int = 0
    rejected: int = 0
    late: int = 0
    expert_failures: dict[str, int] = field(default_factory=dict)
    observer: Callable[[ExpertCall], None] | None = field(default=None, repr=False)
    _warned_until: dict[str, float] = field(default_factory=dict, repr=False)

    def observe(self, call: ExpertCall) -> None:
        if self.observer is not None:
            self.observer(call)

    def record_failure(self, uid: str) -> None:
        self.expert_failures[uid] = self.expert_failures.pop(uid, 0) + 1  # most recent last
        _trim(self.expert_failures)

    def should_warn(self, uid: str, now: float, period: float) -> bool:
        """True at most once per ``period`` seconds for each expert."""
        if now < self._warned_until.get(uid, float("-inf")):
            return False
        self._warned_until.pop(uid, None)
        self._warned_until[uid] = now + period
        _trim(self._warned_until)
        return True


def _trim(table: dict[str, Any]) -> None:
    while len(table) > MAX_TRACKED_EXPERTS:
        del table[next(iter(table))]
