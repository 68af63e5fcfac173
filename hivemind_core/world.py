"""Where a peer's clock and randomness come from when its creator does not say.

A real peer lives in the real world: DHT expiration times are wall-clock seconds (every
machine must agree on them, and ``loop.time()`` is per machine) and randomness comes from the
operating system. A simulated peer lives in the world of its event loop: a loop that carries a
``hivemind_world`` attribute (a :class:`World`) supplies the virtual clock and seeded random
streams. So core code that is not handed a ``clock`` or ``rng`` still runs reproducibly in
virtual time, and reading the wall clock from inside a simulated loop raises
:class:`WallClockInSimulation` instead of silently mixing real time into virtual time.

This is the only module of ``hivemind_core`` that reads the wall clock.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Protocol

WORLD_ATTRIBUTE = "hivemind_world"


class World(Protocol):
    """What a simulated event loop offers the peers running on it."""

    def clock(self) -> float:
        """The current time, in the seconds that DHT expiration times use."""
        ...

    def rng(self, purpose: str) -> random.Random:
        """A new, reproducible random stream; each call gets a different one."""
        ...


class WallClockInSimulation(RuntimeError):
    """Core code read the wall clock while running inside a simulated world."""


def running_world() -> World | None:
    """The world of the running event loop, or None in the real world (or with no loop)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return getattr(loop, WORLD_ATTRIBUTE, None)


def wall_clock() -> float:
    """Seconds since the Unix epoch; refuses to run inside a simulated world."""
    if running_world() is not None:
        raise WallClockInSimulation(
            "the wall clock was read inside a simulation: pass the world's clock (or none, to get it)"
        )
    return time.time()


def default_clock() -> Callable[[], float]:
    """The running world's clock, or the wall clock for real peers."""
    world = running_world()
    return wall_clock if world is None else world.clock


def default_rng(purpose: str) -> random.Random:
    """A seeded stream of the running world, or OS-seeded randomness for real peers."""
    world = running_world()
    return random.Random() if world is None else world.rng(purpose)
