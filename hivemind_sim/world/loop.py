"""An asyncio event loop whose clock is a simpy Environment.

``loop.time()`` returns ``env.now``. Where a real loop would block in ``select(timeout)``
waiting for sockets, this one steps simpy events (network deliveries, churn, failures) up to
the next asyncio timer instead, stopping early as soon as one of them wakes asyncio code. So
asyncio timers and simpy events form one queue ordered by virtual time, and sleeping a
simulated day costs microseconds. Nothing here reads the wall clock.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import simpy


class SimulationStuck(RuntimeError):
    """Nothing can ever happen again, yet the main coroutine is still waiting."""


class _VirtualSelector:
    """Stands in for the selector: "waiting for I/O" means running simpy events."""

    def __init__(self, loop: VirtualTimeLoop, env: simpy.Environment) -> None:
        self._loop = loop
        self._env = env

    def select(self, timeout: float | None) -> list[Any]:
        env, ready = self._env, self._loop._ready  # the loop's queue of runnable callbacks
        target = math.inf if timeout is None else env.now + timeout
        while True:
            next_time = env.peek()
            if next_time > target or next_time == math.inf:
                break
            env.step()
            if ready:
                return []
        if target == math.inf:
            raise SimulationStuck(
                "the simulation is stuck: no asyncio timer, no runnable callback and no simpy "
                "event is left, so whatever the main coroutine awaits can never happen"
            )
        if target > env.now:
            env.run(until=target)
        return []


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """An event loop that runs in simulated time; see the module docstring.

    It has no sockets: code that tries to open one fails, which is the point (core code
    reaches the network through a Transport). ``simulation`` is set by the owning
    :class:`~hivemind_sim.world.simulation.Simulation`.
    """

    def __init__(self, env: simpy.Environment) -> None:
        super().__init__()
        self.env = env
        self._selector = _VirtualSelector(self, env)
        self.simulation: Any = None

    def time(self) -> float:
        return self.env.now

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        # call_soon_threadsafe lands in the ready queue, which the next iteration picks up:
        # the virtual selector never blocks, so there is no sleeping loop to wake.
        pass
