"""Running coroutines from synchronous code: the real-mode torch/asyncio bridge.

Torch autograd calls ``forward``/``backward`` synchronously, but remote experts are reached
through asyncio. A ``Bridge`` runs a coroutine to completion and returns its result to the
calling thread. In real mode that is :class:`LoopThread`, an event loop on a background
thread; simulations use a deterministic baton instead (``hivemind_sim.baton``). This module
is real-mode glue, allowed to start a thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Bridge(Protocol):
    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run ``coroutine`` on the bridge's event loop and return (or raise) its outcome."""
        ...


class LoopBridge:
    """Runs coroutines on an event loop that another thread is running."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coroutine.close()
            raise RuntimeError("cannot block on the bridge from its own loop thread; await instead")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


class LoopThread(LoopBridge):
    """An asyncio loop on a daemon thread of its own; :meth:`run` blocks the caller until done."""

    def __init__(self, name: str = "hivemind-loop") -> None:
        super().__init__(asyncio.new_event_loop())
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()
