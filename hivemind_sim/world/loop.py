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
import heapq
import math
from asyncio.base_events import MAXIMUM_SELECT_TIMEOUT
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from concurrent.futures import Executor
from typing import Any, TypeVar

import simpy

T = TypeVar("T")


class SimulationStuck(RuntimeError):
    """Nothing can ever happen again, yet the main coroutine is still waiting."""


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """An event loop that runs in simulated time; see the module docstring.

    It has no sockets: code that tries to open one fails, which is the point (core code
    reaches the network through a Transport). ``simulation`` is set by the owning
    :class:`~hivemind_sim.world.simulation.Simulation`.
    """

    def __init__(self, env: simpy.Environment) -> None:
        super().__init__()
        self.env = env
        self.simulation: Any = None
        self._unfinished: dict[asyncio.Task[Any], None] = {}
        self._prune_tasks_at = 64
        self._generators: dict[AsyncGenerator[Any, Any], None] = {}
        self._prune_generators_at = 64

    def time(self) -> float:
        return self.env.now

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _run_once(self) -> None:
        """One iteration: asyncio's own (``BaseEventLoop._run_once``), step for step, with the
        selector's wait replaced by stepping simpy and nothing for debug mode or I/O.

        Same order as asyncio's: drop cancelled timers, wait (here: step simpy events up to the
        next timer, stopping as soon as one makes a callback runnable), move due timers to the
        ready queue, run what was ready. Written out because it is the simulation's innermost
        loop: the generic version's indirections cost a third of a simulated RPC.
        """
        scheduled, ready = self._scheduled, self._ready
        count = len(scheduled)
        if count > 100 and self._timer_cancelled_count / count > 0.5:  # asyncio's thresholds
            kept = []
            for handle in scheduled:
                if handle._cancelled:
                    handle._scheduled = False
                else:
                    kept.append(handle)
            heapq.heapify(kept)
            self._scheduled = scheduled = kept
            self._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:
                self._timer_cancelled_count -= 1
                heapq.heappop(scheduled)._scheduled = False

        env = self.env
        if ready or self._stopping:
            self._advance(env.now)
        elif scheduled:
            self._advance(env.now + min(max(0.0, scheduled[0]._when - env.now), MAXIMUM_SELECT_TIMEOUT))
        else:
            self._advance(math.inf)

        end_time = env.now + self._clock_resolution
        while scheduled and scheduled[0]._when < end_time:
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            ready.append(handle)

        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()

    def _advance(self, target: float) -> None:
        """Step simpy events up to virtual time ``target``; return early once one of them has
        made an asyncio callback runnable. "Waiting for I/O" in a simulation.

        ``Environment.step`` and ``run(until=...)`` written out over simpy's queue (``_queue``,
        ``_now``; simpy is pinned below 5): every message of a simulation passes here, and the
        calls, and the event and exception that ``run(until=...)`` costs, add up. Same order of
        events, same failures (an event that failed and that nobody defused stops the run).
        """
        env, ready = self.env, self._ready
        queue = env._queue
        while queue and queue[0][0] <= target:
            env._now, _, _, event = heapq.heappop(queue)
            callbacks, event.callbacks = event.callbacks, None
            for callback in callbacks:
                callback(event)
            if not event._ok and not hasattr(event, "_defused"):
                error = type(event._value)(*event._value.args)
                error.__cause__ = event._value
                raise error
            if ready:
                return
        if target == math.inf:
            raise SimulationStuck(
                "the simulation is stuck: no asyncio timer, no runnable callback and no simpy "
                "event is left, so whatever the main coroutine awaits can never happen"
            )
        if target > env._now:
            env._now = target  # what run(until=target) comes to: nothing is due before it

    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        """A task, held until it is done (see the module docstring). Finished ones are
        forgotten now and then rather than by a done callback, which would cost every task one
        more turn of the loop."""
        task = super().create_task(coro, name=name, context=context)
        unfinished = self._unfinished
        if len(unfinished) >= self._prune_tasks_at:
            self._unfinished = unfinished = {t: None for t in unfinished if not t.done()}
            self._prune_tasks_at = max(64, 2 * len(unfinished))
        unfinished[task] = None
        return task

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
