"""Running coroutines from synchronous code: the real-mode torch/asyncio bridge.

Torch autograd calls ``forward``/``backward`` synchronously, but remote experts are reached
through asyncio. A ``Bridge`` runs a coroutine to completion and returns its result to the
calling thread. In real mode that is :class:`LoopThread`, an event loop on a background
thread; simulations use a deterministic baton instead (``hivemind_sim.swarms.baton``). This module
is real-mode glue, allowed to start a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Bridge(Protocol):
    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run ``coroutine`` on the bridge's event loop and return (or raise) its outcome."""
        ...


class LoopBridge:
    """Runs coroutines on an event loop that another thread is running.

    A call that outlives its ``timeout`` is cancelled on the loop, and :meth:`run` waits up to
    ``cancel_grace`` seconds for the coroutine to unwind (close its connections, release what
    it holds) before raising ``TimeoutError``: a timed-out call never keeps running unseen.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, cancel_grace: float = 5.0) -> None:
        self.loop = loop
        self.cancel_grace = cancel_grace

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coroutine.close()
            raise RuntimeError("cannot block on the bridge from its own loop thread; await instead")
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        tasks: list[asyncio.Future[T]] = []

        def start() -> None:
            try:
                task = asyncio.ensure_future(coroutine, loop=self.loop)
            except BaseException as error:  # not awaitable: the caller must hear of it, not wait
                outcome.set_exception(error)
                return
            task.add_done_callback(lambda done: _settle(done, outcome))
            tasks.append(task)

        self.loop.call_soon_threadsafe(start)
        try:
            return outcome.result(timeout)
        except concurrent.futures.TimeoutError:
            pass
        # start() ran before this callback: the loop runs callbacks in the order they were added
        self.loop.call_soon_threadsafe(lambda: [task.cancel() for task in tasks])
        concurrent.futures.wait([outcome], timeout=self.cancel_grace)
        raise TimeoutError(f"the call did not finish within {timeout} s and was cancelled")


def _settle(task: asyncio.Future[T], outcome: concurrent.futures.Future[T]) -> None:
    """Hand a finished task's outcome to the thread waiting for it."""
    if task.cancelled():
        outcome.cancel()
        outcome.set_running_or_notify_cancel()  # wakes concurrent.futures.wait() as well
    elif (error := task.exception()) is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(task.result())


async def _cancel_others(grace: float) -> None:
    """Cancel every other task of the running loop and give them ``grace`` seconds to unwind."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=grace)


class LoopThread(LoopBridge):
    """An asyncio loop on a daemon thread of its own; :meth:`run` blocks the caller until done."""

    def __init__(self, name: str = "hivemind-loop") -> None:
        super().__init__(asyncio.new_event_loop())
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Cancel whatever still runs on the loop (bounded wait), then stop and close it."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(_cancel_others(self.cancel_grace), self.loop).result(
                self.cancel_grace + 1
            )
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()
