"""A run's own log: the peers' warnings (lost gradients, bans, timeouts) go to the report's
``run.log`` instead of over the progress bar or a sweep's console."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

PROJECT_LOGGERS = ("hivemind_core", "hivemind_sim")


@contextlib.contextmanager
def logs_to(path: Path) -> Iterator[None]:
    """Records of the project's loggers go to ``path`` only, for the block (from every thread:
    trainers under the baton log from theirs)."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
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
        handler.close()
