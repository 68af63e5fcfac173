"""The real world's clock, used as the default by real peers; simulations hand in their own.

DHT expiration times must mean the same moment on every peer, so real peers use wall-clock
time (loop.time() is per-machine). This is the only module of hivemind_core that reads it.
"""

from __future__ import annotations

import time


def wall_clock() -> float:
    """Seconds since the Unix epoch."""
    return time.time()
