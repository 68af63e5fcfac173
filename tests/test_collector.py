"""The garbage collector's tuning while a simulation runs, and its undoing afterwards."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from hivemind_sim import Simulation
from hivemind_sim.world.collector import SIMULATION_THRESHOLDS, tuned_collector


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


async def _thresholds_now() -> tuple[int, ...]:
    return gc.get_threshold()


def test_a_simulation_runs_with_the_tuned_thresholds_and_puts_the_old_ones_back(thresholds: None) -> None:
    with Simulation() as sim:
        assert sim.run(_thresholds_now()) == SIMULATION_THRESHOLDS
    assert gc.get_threshold() == (700, 10, 10)


def test_the_old_thresholds_come_back_when_the_simulation_fails(thresholds: None) -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    with Simulation() as sim, pytest.raises(RuntimeError, match="boom"):
        sim.run(fail())
    assert gc.get_threshold() == (700, 10, 10)


def test_nested_runs_restore_only_when_the_outermost_ends(thresholds: None) -> None:
    with tuned_collector():
        with Simulation() as inner:
            assert inner.run(_thresholds_now()) == SIMULATION_THRESHOLDS
        assert gc.get_threshold() == SIMULATION_THRESHOLDS  # the outer one still runs
    assert gc.get_threshold() == (700, 10, 10)


def test_concurrent_runs_in_threads_leave_the_users_thresholds_behind(thresholds: None) -> None:
    entered, release = threading.Barrier(2), threading.Event()

    def hold() -> None:
        with tuned_collector():
            entered.wait(timeout=10)
            release.wait(timeout=10)

    other = threading.Thread(target=hold)
    other.start()
    with tuned_collector():
        entered.wait(timeout=10)
    assert gc.get_threshold() == SIMULATION_THRESHOLDS  # the other thread's run goes on
    release.set()
    other.join(timeout=10)
    assert gc.get_threshold() == (700, 10, 10)


def test_higher_thresholds_of_the_users_own_are_kept_and_zero_is_left_alone(thresholds: None) -> None:
    gc.set_threshold(200_000, 5, 1000)
    with tuned_collector():
        assert gc.get_threshold() == (200_000, 10, 1000)
    assert gc.get_threshold() == (200_000, 5, 1000)
    gc.set_threshold(0)
    with tuned_collector():
        assert gc.get_threshold()[0] == 0  # automatic collection stays off
    assert gc.get_threshold()[0] == 0
