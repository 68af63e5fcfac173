"""Python's cyclic garbage collector, tuned while a simulation runs.

A simulated swarm is millions of long-lived objects (routing tables, contacts, transports,
tasks) that grow with every join. With CPython's default thresholds (700, 10, 10) a full
collection, which walks every one of them, runs every hundred young collections: while 6,400
peers joined, 45 full collections took 23 of 117 CPU seconds, and a 12,800-peer swarm spent
38% of its CPU in the collector. Young collections every 10,000 allocations and a full one every
100 of the middle ones took 7 s in all for the same 6,400 joins (137 → 108 CPU s), with the
same peak memory; every 50,000 allocations, 4.7 s (106 → 88 CPU s in one sitting): fewer of the
objects that live as long as one RPC are still alive when a young collection comes, to be
walked once more in the next generation. Reference counting still frees everything that is not
in a cycle at once; garbage in cycles waits 50,000 allocations at most for its collection.

Digests do not depend on when the collector runs (the loop holds every pending task; see
``loop.py``), so the tuning changes speed only.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

SIMULATION_THRESHOLDS = (50_000, 10, 100)
"""Allocations between young collections; young collections per middle one; middle ones per
full one (CPython also waits until the objects promoted since the last full collection are a
quarter of those that survived it)."""

_lock = threading.Lock()
_running = 0  # simulations inside ``tuned_collector`` now, in any thread
_saved: tuple[int, ...] = ()  # the thresholds to put back when the last one leaves


@contextlib.contextmanager
def tuned_collector() -> Iterator[None]:
    """Use ``SIMULATION_THRESHOLDS`` inside; the thresholds from before come back afterwards.

    Nested and concurrent uses (simulations run one inside another's test, or in threads of
    one sweep worker) share one tuning: the first in saves the user's thresholds, the last out
    restores them. A user's own higher thresholds are kept, and a first threshold of 0
    (automatic collection off) is left alone.
    """
    global _running, _saved
    with _lock:
        if _running == 0:
            _saved = gc.get_threshold()
            if _saved[0] != 0:
                pairs = zip(SIMULATION_THRESHOLDS, _saved, strict=True)
                gc.set_threshold(*(max(mine, theirs) for mine, theirs in pairs))
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0:
                gc.set_threshold(*_saved)
