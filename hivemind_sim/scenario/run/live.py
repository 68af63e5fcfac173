"""The live peers among a fixed list of names, kept up to date as peers start and stop.

The DHT workload draws a live requester for every operation: rebuilding the list each time
cost a pass over every peer per operation, quadratic in a 100,000-peer run. A :class:`LiveNames` is what that
pass returned, the live names in the list's order, as a sequence that ``random.choice`` draws
from the same way.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import overload


class LiveNames(Sequence[str]):
    """The names of ``names`` that are up, in the order of ``names``."""

    def __init__(self, names: Sequence[str], up: Iterable[str] = ()) -> None:
        self._names = list(names)
        self._rank = {name: rank for rank, name in enumerate(self._names)}
        self._up = sorted(self._rank[name] for name in up if name in self._rank)

    def started(self, name: str) -> None:
        rank = self._rank.get(name)
        if rank is not None:
            index = bisect.bisect_left(self._up, rank)
            if index == len(self._up) or self._up[index] != rank:
                self._up.insert(index, rank)

    def stopped(self, name: str) -> None:
        rank = self._rank.get(name)
        if rank is not None:
            index = bisect.bisect_left(self._up, rank)
            if index < len(self._up) and self._up[index] == rank:
                del self._up[index]

    def __len__(self) -> int:
        return len(self._up)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self._names[rank] for rank in self._up[index]]
        return self._names[self._up[index]]
