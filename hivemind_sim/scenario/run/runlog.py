"""A run's own log: the peers' warnings (lost gradients, bans, timeouts) go to the report's
``run.log`` instead of over the progress bar or a sweep's console.

Each line starts with the simulated time it was logged at, in seconds from the start of the
measured window (negative during the warmup), so a line can be placed against the report's
plots. The same warning repeated over and over says nothing new after a few times: each kind
(one logger, one message template, one exception type) is written ``SHOWN`` times, and the log
ends with how many more of each kind there were (the metrics count them all).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

PROJECT_LOGGERS = ("hivemind_core", "hivemind_sim")
SHOWN = 3
"""Lines written of each kind of message; later ones are only counted."""

_clock: Callable[[], float] | None = None  # the running simulation's, set by `simulated_time`


@contextlib.contextmanager
def simulated_time(clock: Callable[[], float]) -> Iterator[None]:
    """Stamp the records logged in the block with ``clock()`` (measured-window seconds)."""
    global _clock
    saved, _clock = _clock, clock
    try:
        yield
    finally:
        _clock = saved


class _Stamp(logging.Filter):
    """Adds `when`: the simulated time, or nothing outside a simulation."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.when = "" if _clock is None else f"{_clock():9.2f} s  "
        return True


class _Repeats(logging.Filter):
    """Lets each kind of record through ``SHOWN`` times and counts the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[tuple[str, str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        kind = (record.name, str(record.msg), error)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return self.counts[kind] <= SHOWN

    def summary(self) -> list[str]:
        return [
            f"{count - SHOWN} more like this from {name}: {template}" + (f" ({error})" if error else "")
            for (name, template, error), count in self.counts.items()
            if count > SHOWN
        ]


@contextlib.contextmanager
def logs_to(path: Path) -> Iterator[None]:
    """Records of the project's loggers go to ``path`` only, for the block (from every thread:
    trainers under the baton log from theirs)."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(when)s%(levelname)s %(name)s: %(message)s"))
    repeats = _Repeats()
    handler.addFilter(_Stamp())
    handler.addFilter(repeats)
    loggers = [logging.getLogger(name) for name in PROJECT_LOGGERS]
    saved = [(logger.propagate, logger.level) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, (propagate, level) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.propagate, logger.level = propagate, level
        for line in repeats.summary():
            handler.stream.write(line + "\n")
        handler.close()
