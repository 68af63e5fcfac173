"""Warmup joins go in waves that start small and grow with the swarm already up."""

from __future__ import annotations

import math

import pytest

from hivemind_sim.scenario.run.peers import JOIN_WAVE, JOIN_WAVES, join_waves


@pytest.mark.parametrize("count", [0, 1, 24, 25, 26, 999, 1000, 9_999, 99_999])
def test_every_peer_joins_once_in_order(count: int) -> None:
    waves = join_waves(count)
    assert [start for start, _ in waves] == [0, *(end for _, end in waves[:-1])][: len(waves)]
    assert sum(end - start for start, end in waves) == count
    assert all(end > start for start, end in waves)


def test_up_to_a_thousand_peers_join_25_at_a_time() -> None:
    """What the shipped scenarios of up to 1,000 peers always did (their digests rest on it)."""
    assert [end - start for start, end in join_waves(999)] == [JOIN_WAVE] * 39 + [24]


@pytest.mark.parametrize("count", [9_999, 99_999])
def test_a_wave_never_far_outnumbers_the_peers_already_up(count: int) -> None:
    """100,000 peers used to start with 2,500 joining at once through the first peer alone."""
    up = 1  # the first peer, which bootstraps alone
    for start, end in join_waves(count):
        assert end - start <= max(JOIN_WAVE, 1.5 * up)
        assert end - start <= max(JOIN_WAVE, math.ceil(count / JOIN_WAVES))
        up += end - start
    assert len(join_waves(count)) <= JOIN_WAVES + 12  # the ramp adds a few waves, not hundreds
