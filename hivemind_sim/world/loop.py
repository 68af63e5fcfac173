"""An asyncio event loop whose clock is a simpy Environment.

``loop.time()`` returns ``env.now``. Where a real loop would block in ``select(timeout)``
waiting for sockets, this one steps simpy events (network deliveries, churn, failures) up to
the next asyncio timer instead, stopping early as soon as one of them wakes asyncio code. So
asyncio timers and simpy events form one queue ordered by virtual time, and sleeping a
simulated day costs microseconds. Nothing here reads the wall clock.

Nothing may depend on memory addresses, the garbage collector's timing or other threads
either, so the loop holds every unfinished task (and every started asynchronous generator) in
creation order: one is never collected while pending, which would run its ``finally`` blocks
at whatever moment the collector happens to run, and whatever cancels "all tasks" does so in
an order that repeats. ``run_in_executor`` is refused: a thread's result would arrive at a
moment set by the wall clock.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from concurrent.futures import Executor
from typing import Any, TypeVar

import simpy

T = TypeVar("T")


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
        self._unfinished: dict[asyncio.Task[Any], None] = {}
        self._generators: dict[AsyncGenerator[Any, Any], None] = {}
        self._prune_generators_at = 64

    def time(self) -> float:
        return self.env.now

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        """A task, held until it is done (see the module docstring)."""
        task = super().create_task(coro, name=name, context=context)
        self._unfinished[task] = None
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._unfinished.pop(task, None)

    def unfinished_tasks(self) -> list[asyncio.Task[Any]]:
        """Tasks not done yet, in the order they were created (``asyncio.all_tasks`` is a set:
        it iterates in the order of memory addresses)."""
        return [task for task in self._unfinished if not task.done()]

    def _asyncgen_firstiter_hook(self, agen: AsyncGenerator[Any, Any]) -> None:
        super()._asyncgen_firstiter_hook(agen)
        if len(self._generators) >= self._prune_generators_at:  # forget finished ones now and then
            self._generators = {g: None for g in self._generators if g.ag_frame is not None}
            self._prune_generators_at = max(64, 2 * len(self._generators))
        self._generators[agen] = None  # never collected unfinished: its aclose() would run at GC time

    async def shutdown_asyncgens(self) -> None:
        """Close unfinished asynchronous generators in the order they started."""
        self._asyncgens_shutdown_called = True
        generators = [g for g in self._generators if g.ag_frame is not None]
        self._generators.clear()
        self._asyncgens.clear()
        for generator in generators:
            try:
                await generator.aclose()
            except Exception as error:
                self.call_exception_handler(
                    {"message": f"closing {generator!r} failed", "exception": error, "asyncgen": generator}
                )

    def run_in_executor(
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        raise RuntimeError(
            "run_in_executor in a simulation: a thread's result would arrive at a wall-clock moment "
            "and break reproducibility; run the work inline (see hivemind_sim.swarms.compute)"
        )

    def _write_to_self(self) -> None:
        # call_soon_threadsafe lands in the ready queue, which the next iteration picks up:
        # the virtual selector never blocks, so there is no sleeping loop to wake.
        pass
