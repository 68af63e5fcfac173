"""Bytes queued for peers that have not read them yet: a budget per connection and in total.

A connection whose queue goes past its limit pauses (``Connection.pause_writing``) and is
served no more until it drains. When the queues of all such connections together go past
``max_total_backlog``, every connection's limit drops to ``PRESSURE_BACKLOG`` until the total
halves, so the connections with the biggest queues wait and the peers that read keep being
served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection

logger = logging.getLogger(__name__)

PRESSURE_BACKLOG = 16 * 1024  # per-connection backlog while the total is over its budget


class Backlog:
    """Which connections are over their limit, and whether the total is over its budget."""

    def __init__(
        self, per_connection: int, total: int, connections: Callable[[], Iterable[Connection]]
    ) -> None:
        self.per_connection = per_connection
        self.total = total
        self.peak = 0  # the most bytes seen queued (see ``observe``)
        self.under_pressure = False
        self._connections = connections  # every open connection, to change their limits
        self._over: dict[Connection, None] = {}  # connections whose writing is paused

    def limit(self) -> int:
        """What one connection may queue now."""
        if self.under_pressure:
            return min(PRESSURE_BACKLOG, self.per_connection)
        return self.per_connection

    def observe(self, queued: int) -> None:
        """``queued`` bytes are queued now: remember the peak."""
        if queued > self.peak:
            self.peak = queued

    def grew(self, connection: Connection) -> None:
        """``connection`` went over its limit: check the total against its budget."""
        self._over[connection] = None
        total = sum(c.queued_bytes for c in self._over)
        self.observe(total)
        if total > self.total and not self.under_pressure:
            self._set_pressure(True)
            logger.warning(
                "%d bytes queued for %d peers that do not read: limiting every connection to %d bytes",
                total,
                len(self._over),
                self.limit(),
            )

    def drained(self, connection: Connection) -> None:
        """``connection`` is back under its limit, or closed."""
        if connection not in self._over:
            return
        del self._over[connection]
        if self.under_pressure:
            total = sum(c.queued_bytes for c in self._over)
            if total <= self.total // 2:
                self._set_pressure(False)
                logger.info(
                    "queued bytes back to %d: connections may queue %d bytes again", total, self.limit()
                )

    def _set_pressure(self, on: bool) -> None:
        self.under_pressure = on
        limit = self.limit()
        for connection in self._connections():
            connection.set_write_limit(limit)
