"""Round-trip times measured per contact, and the timeouts they suggest (RFC 6298's RTO).

One fixed timeout for every contact is wrong both ways: a contact on a slow link needs seconds,
while one lost message to a contact that answers in 50 ms costs the whole timeout of waiting.
So each answered DHT RPC feeds its measured round trip into a smoothed round-trip time (SRTT)
and its mean deviation (RTTVAR), as TCP's retransmission timer does, and the next RPC to that
contact waits ``SRTT + 4·RTTVAR``, never less than ``min_timeout`` (a big answer takes longer
than a small one's round trip) nor more than ``max_timeout``. A timeout doubles that contact's
wait until it answers again, so a contact that only got slower is not timed out over and over.
A contact never measured gets ``max_timeout``: nothing is known of it.

A lookup needs less than a verdict: :meth:`RoundTrips.patience` says when an answer would
normally have come (past which the lookup asks someone else meanwhile) and when the lookup
gives up on it (without calling the contact dead, which the RPC's own timeout still decides).
For a contact never measured, an answer is late when a typical contact's would be (one
estimate fed by every sample: a lookup asks many contacts it never met), but the lookup gives
up on it only at ``max_timeout``: a first request may wait for a connection to be set up, and
giving up on such contacts sooner made lookups over loaded loopback TCP miss live nodes.

The table is keyed by endpoint (pings know nothing else) and holds at most ``capacity``
contacts, forgetting the least recently measured: any peer can make us call new endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

ALPHA = 1 / 8
"""Weight of a new sample in SRTT (RFC 6298)."""
BETA = 1 / 4
"""Weight of a new sample's deviation in RTTVAR (RFC 6298)."""
MIN_MARGIN = 0.2
"""Seconds an answer may come after SRTT before a lookup calls it late, however steady the
contact's round trips were (RFC 6298's clock granularity G; Linux's least RTO): a peer's event
loop busy for a moment, or a path's jitter that a few samples cannot show, is no lost message."""


@dataclass(slots=True)
class _Estimate:
    srtt: float
    rttvar: float
    backoff: int = 0
    """Timeouts since the last answer: each doubles the wait."""


class RoundTrips:
    """Per-contact SRTT and RTTVAR, bounded; see the module docstring."""

    def __init__(self, *, capacity: int, min_timeout: float, max_timeout: float) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if not 0 < min_timeout <= max_timeout:
            raise ValueError(f"need 0 < min_timeout <= max_timeout, got {min_timeout}, {max_timeout}")
        self.capacity = capacity
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self._estimates: dict[str, _Estimate] = {}  # least recently measured first
        self._typical: _Estimate | None = None
        """Fed by every sample: what to expect of a contact never measured."""

    def __len__(self) -> int:
        return len(self._estimates)

    def observe(self, endpoint: str, seconds: float) -> None:
        """An RPC to ``endpoint`` was answered after ``seconds``."""
        seconds = max(0.0, seconds)
        self._estimates[endpoint] = _update(self._estimates.pop(endpoint, None), seconds)  # last: newest
        if len(self._estimates) > self.capacity:
            del self._estimates[next(iter(self._estimates))]
        self._typical = _update(self._typical, seconds)

    def timed_out(self, endpoint: str) -> None:
        """An RPC to ``endpoint`` got no answer in time: wait twice as long for the next one."""
        estimate = self._estimates.get(endpoint)
        if estimate is not None and self._rto(estimate) < self.max_timeout:
            estimate.backoff += 1

    def timeout(self, endpoint: str) -> float:
        """Seconds the next RPC to ``endpoint`` waits for its answer."""
        estimate = self._estimates.get(endpoint)
        return self.max_timeout if estimate is None else self._rto(estimate)

    def expected(self, endpoint: str) -> float | None:
        """Seconds by which an answer from ``endpoint`` (or, never measured, from a typical
        contact) would normally have come: SRTT plus four deviations, at least ``MIN_MARGIN``
        more than SRTT. None before any sample."""
        estimate = self._estimates.get(endpoint) or self._typical
        if estimate is None:
            return None
        return (estimate.srtt + max(MIN_MARGIN, 4 * estimate.rttvar)) * 2**estimate.backoff

    def patience(self, endpoint: str) -> tuple[float, float] | None:
        """How long a lookup waits for ``endpoint``'s answer before asking someone else
        meanwhile (:meth:`expected`), and before giving up on it (that, but at least
        ``min_timeout``: a busy peer or a big answer is no lost message; ``max_timeout`` for an
        endpoint never measured); None before any sample."""
        expected = self.expected(endpoint)
        if expected is None:
            return None
        if endpoint not in self._estimates:  # a first contact may cost a connection's handshake too
            return expected, self.max_timeout
        return expected, max(expected, self.min_timeout)

    def _rto(self, estimate: _Estimate) -> float:
        rto = max(self.min_timeout, estimate.srtt + 4 * estimate.rttvar) * 2**estimate.backoff
        return min(rto, self.max_timeout)


def _update(estimate: _Estimate | None, seconds: float) -> _Estimate:
    """``estimate`` with one more sample (RFC 6298 section 2); a first sample starts one."""
    if estimate is None:
        return _Estimate(seconds, seconds / 2)
    estimate.rttvar += BETA * (abs(estimate.srtt - seconds) - estimate.rttvar)
    estimate.srtt += ALPHA * (seconds - estimate.srtt)
    estimate.backoff = 0
    return estimate
