"""RoundTrips: RFC 6298's smoothed round trip per contact, the timeouts it gives, and its bound."""

from __future__ import annotations

import pytest

from hivemind_core.dht.rtt import MIN_MARGIN, RoundTrips


def table(capacity: int = 8) -> RoundTrips:
    return RoundTrips(capacity=capacity, min_timeout=1.0, max_timeout=3.0)


def test_a_contact_never_measured_gets_the_configured_timeout_and_no_patience() -> None:
    trips = table()
    assert trips.timeout("a:1") == 3.0
    assert trips.expected("a:1") is None and trips.patience("a:1") is None


def test_the_first_sample_sets_srtt_and_half_of_it_as_deviation() -> None:
    trips = table()
    trips.observe("a:1", 0.5)
    assert trips.timeout("a:1") == pytest.approx(0.5 + 4 * 0.25)  # SRTT + 4·RTTVAR = 3R
    assert trips.expected("a:1") == pytest.approx(1.5)


def test_steady_round_trips_converge_and_the_timeout_stays_within_its_bounds() -> None:
    trips = table()
    for _ in range(100):
        trips.observe("fast:1", 0.05)
        trips.observe("slow:1", 4.0)
    assert trips.timeout("fast:1") == 1.0, "never below min_timeout"
    assert trips.timeout("slow:1") == 3.0, "never above max_timeout"
    assert trips.expected("fast:1") == pytest.approx(0.05 + MIN_MARGIN, abs=1e-3), "steady: SRTT + margin"


def test_the_deviation_follows_varying_round_trips() -> None:
    trips = table()
    for i in range(200):
        trips.observe("a:1", 0.2 if i % 2 else 0.6)
    expected = trips.expected("a:1")
    assert expected is not None and 0.8 < expected < 1.4, expected  # SRTT 0.4, RTTVAR about 0.2


def test_each_timeout_doubles_the_wait_until_an_answer_resets_it() -> None:
    trips = RoundTrips(capacity=8, min_timeout=0.1, max_timeout=3.0)
    for _ in range(50):
        trips.observe("a:1", 0.1)
    base = trips.timeout("a:1")
    trips.timed_out("a:1")
    assert trips.timeout("a:1") == pytest.approx(2 * base)
    for _ in range(10):
        trips.timed_out("a:1")
    assert trips.timeout("a:1") == 3.0, "backing off stops at max_timeout"
    trips.observe("a:1", 0.1)
    assert trips.timeout("a:1") == pytest.approx(base, rel=0.1)
    trips.timed_out("never-measured:1")  # nothing to back off from: no entry appears
    assert len(trips) == 1


def test_a_contact_never_measured_is_late_like_a_typical_one_but_waited_for_to_the_end() -> None:
    trips = table()
    for _ in range(50):
        trips.observe("a:1", 0.3)
    late, give_up = trips.patience("new:1") or (None, None)
    assert late == pytest.approx(0.3 + MIN_MARGIN, abs=1e-3)
    assert give_up == 3.0, "a first request may cost a connection setup: given up only at max_timeout"
    late, give_up = trips.patience("a:1") or (None, None)
    assert late == pytest.approx(0.3 + MIN_MARGIN, abs=1e-3) and give_up == 1.0, "at least min_timeout"


def test_the_table_is_bounded_and_forgets_the_least_recently_measured() -> None:
    trips = table(capacity=3)
    for i in range(3):
        trips.observe(f"p:{i}", 0.1)
    trips.observe("p:0", 0.1)  # measured again: now the most recent
    trips.observe("p:3", 0.1)
    assert len(trips) == 3
    assert trips.timeout("p:1") == 3.0, "the least recently measured was forgotten"
    assert trips.timeout("p:0") == 1.0 and trips.timeout("p:3") == 1.0
    for i in range(10_000):  # any peer can make us call new endpoints: the table never grows past its bound
        trips.observe(f"flood:{i}", 0.1)
    assert len(trips) == 3


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RoundTrips(capacity=0, min_timeout=1.0, max_timeout=3.0)
    with pytest.raises(ValueError, match="min_timeout"):
        RoundTrips(capacity=1, min_timeout=4.0, max_timeout=3.0)
