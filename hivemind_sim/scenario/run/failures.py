"""One peer's failure is that peer's failure: counted, logged, and the run goes on.

Code that runs on behalf of one peer (its DHT requests, its training steps, its joins, leaves
and restarts) may raise what nobody expected: a bug in the core, or a state the core did not
plan for. Such an exception is recorded as the counter `peers.errors`, logged with its traceback
to the run's `run.log` under the peer's name, and the simulation carries on without that piece of
work. Only the runner's own code (scheduling, sampling, the fault timeline) stops a run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from ..results.metrics import Recorder

logger = logging.getLogger(__name__)


class RunStopped(RuntimeError):
    """The run cannot go on as a whole (no peer could join, say); the message says why in one line."""


ERRORS = "peers.errors"
JOIN_FAILURES = "peers.join_failures"


class PeerFailures:
    """Records the exceptions raised by peers' code; see the module docstring."""

    def __init__(self, recorder: Recorder, clock: Callable[[], float]) -> None:
        self.recorder = recorder
        self.clock = clock  # measured-window time

    def record(self, peer: str, what: str, error: BaseException) -> None:
        """``peer``'s ``what`` ("a DHT get", "a training step") raised ``error``."""
        self.recorder.count(ERRORS, max(0.0, self.clock()), 1)  # the warmup's count at the start
        logger.error("%s: %s failed: %s: %s", peer, what, type(error).__name__, error, exc_info=error)

    def join_failed(self, peer: str, error: BaseException) -> None:
        """``peer`` could not join the network (it stays down until it next tries)."""
        self.recorder.count(JOIN_FAILURES, max(0.0, self.clock()), 1)
        logger.warning("%s could not join: %s", peer, error)

    @contextlib.contextmanager
    def guard(self, peer: str, what: str) -> Iterator[None]:
        """Record an exception raised in the block as ``peer``'s, and go on after the block."""
        try:
            yield
        except Exception as error:
            self.record(peer, what, error)

    async def guarded(self, peer: str, what: str, work: Coroutine[Any, Any, object]) -> None:
        """Await ``work``; an exception it raises is ``peer``'s (see :meth:`guard`)."""
        with self.guard(peer, what):
            await work
