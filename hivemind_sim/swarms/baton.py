"""The deterministic baton: synchronous torch code that waits on simulated peers.

A trainer calling ``loss.backward()`` through remote experts is synchronous code, and it
cannot block the one simulation thread. So each trainer runs in a thread of its own, and
exactly one thread runs at any moment: the event loop, or one trainer. When a trainer needs
a coroutine's result (``Baton.run``, the Bridge interface), it hands the coroutine to the
loop and sleeps; the loop awaits it in virtual time and wakes the trainer with the outcome.
While a trainer computes, the loop thread waits for it, so virtual time stands still and the
interleaving is the same on every run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _Trainer:
    """One trainer thread and the two turns it trades with the loop.

    A turn is a lock held while it is not that side's turn: releasing it hands the turn over,
    acquiring it waits for the turn. A bare lock is the cheapest hand-off between two threads
    (``threading.Event`` goes through a condition variable, several times the cost), and a
    trainer step trades turns several times.
    """

    def __init__(self, function: Callable[[], Any], name: str) -> None:
        self.function = function
        self.trainer_turn = threading.Lock()
        self.loop_turn = threading.Lock()
        self.trainer_turn.acquire()
        self.loop_turn.acquire()
        self.request: Coroutine[Any, Any, Any] | None = None
        self.reply: tuple[Any, BaseException | None] = (None, None)
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._body, name=name, daemon=True)

    def _body(self) -> None:
        self.trainer_turn.acquire()
        try:
            self.result = self.function()
        except BaseException as error:
            self.error = error
        self.done = True
        self.loop_turn.release()

    def wait_on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Trainer side: hand the coroutine to the loop and sleep until it has an outcome."""
        self.request = coroutine
        self.loop_turn.release()
        self.trainer_turn.acquire()
        value, error = self.reply
        self.reply = (None, None)
        if error is not None:
            raise error
        return value

    async def drive(self) -> Any:
        """Loop side: alternate with the (started) trainer until it returns."""
        while True:
            self.trainer_turn.release()
            self.loop_turn.acquire()  # blocks the loop thread on purpose: only one side runs
            if self.done:
                break
            coroutine, self.request = self.request, None
            assert coroutine is not None
            try:
                self.reply = (await coroutine, None)
            except BaseException as error:  # handed to the trainer, which decides what it means
                self.reply = (None, error)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result


class Baton:
    """Runs trainer functions in threads under the baton; also the Bridge they call."""

    def __init__(self) -> None:
        self._trainers: dict[int, _Trainer] = {}
        self._count = 0

    async def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` in a trainer thread and return its result (await on the loop)."""
        self._count += 1
        trainer = _Trainer(function, name=f"trainer-{self._count}")
        trainer.thread.start()  # it waits for the baton before running anything
        assert trainer.thread.ident is not None
        self._trainers[trainer.thread.ident] = trainer
        try:
            return await trainer.drive()
        finally:
            del self._trainers[trainer.thread.ident]

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Bridge interface, called from a trainer thread: wait for ``coroutine`` on the loop."""
        trainer = self._trainers.get(threading.get_ident())
        if trainer is None:
            coroutine.close()
            raise RuntimeError("Baton.run must be called from a function started with Baton.call")
        return trainer.wait_on_loop(coroutine)
