"""Expert UIDs on a grid: ``ffn.4.17`` is expert (4, 17) of grid ``ffn``.

The beam search walks the grid one dimension at a time through DHT *prefix* entries
(``ffn.`` -> alive first coordinates, ``ffn.4.`` -> alive second coordinates under 4), so
every UID also names the prefixes it must be announced under.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

_PREFIX = r"[A-Za-z_][A-Za-z0-9_\-]*"
_UID = re.compile(rf"^({_PREFIX})((?:\.\d+)+)$")
_PATTERN_PART = re.compile(r"^(?:\d+|\[\d+:\d+\])$")
MAX_UID_LENGTH = 256
MAX_PATTERN_EXPERTS = 1 << 16
"""Most UIDs ``expand_pattern`` lists unless told otherwise (a 256 x 256 grid)."""


@dataclass(frozen=True, slots=True)
class ExpertUID:
    """A parsed UID: the grid's name and the expert's coordinates in it."""

    grid: str
    coords: tuple[int, ...]

    def __str__(self) -> str:
        return ".".join([self.grid, *map(str, self.coords)])

    def prefixes(self) -> list[tuple[str, int]]:
        """(prefix, next coordinate) pairs to announce: ``ffn.`` -> 4, ``ffn.4.`` -> 17."""
        return [(prefix_of(self.grid, self.coords[:d]), self.coords[d]) for d in range(len(self.coords))]


def grid_share(grid: str, size: tuple[int, ...], first: int, count: int) -> list[str]:
    """``count`` experts of grid ``grid`` (of ``size``) from the ``first``-th in row-major order
    (``ffn.0.0`` is 0, ``ffn.0.1`` is 1...), wrapping round, never more than the grid holds: a
    peer's share of the experts, in a scenario and in a real deployment alike."""
    total = math.prod(size)
    share = []
    for index in range(first, first + min(count, total)):
        coords, rest = [], index % total
        for dim in reversed(size):
            rest, coord = divmod(rest, dim)
            coords.append(coord)
        share.append(str(ExpertUID(grid, tuple(reversed(coords)))))
    return share


def prefix_of(grid: str, coords: tuple[int, ...]) -> str:
    """The DHT key under which the coordinates following ``coords`` are announced."""
    return ".".join([grid, *map(str, coords)]) + "."


def parse_uid(uid: str) -> ExpertUID:
    """Parse ``grid.c1.c2...``; raises ValueError naming what is wrong."""
    if not isinstance(uid, str) or len(uid) > MAX_UID_LENGTH:
        raise ValueError(
            f"an expert UID must be a string of at most {MAX_UID_LENGTH} characters, got {uid!r}"
        )
    match = _UID.match(uid)
    if match is None:
        raise ValueError(
            f"invalid expert UID {uid!r}: expected a grid name and one or more coordinates, like 'ffn.4.17'"
        )
    coords = tuple(int(part) for part in match.group(2)[1:].split("."))
    if str(ExpertUID(match.group(1), coords)) != uid:
        raise ValueError(f"invalid expert UID {uid!r}: coordinates must not have leading zeros")
    return ExpertUID(match.group(1), coords)


def pattern_size(pattern: str) -> int:
    """How many UIDs ``pattern`` names, without listing them; raises ValueError if it is invalid."""
    return math.prod(r.stop - r.start for r in _pattern_ranges(pattern)[1])


def expand_pattern(pattern: str, *, limit: int = MAX_PATTERN_EXPERTS) -> list[str]:
    """UIDs matching ``grid.[a:b].c...``: ranges are half-open, like Python slices.

    A pattern naming more than ``limit`` UIDs is refused before any is built: a typo such as
    ``ffn.[0:100000].[0:100000]`` would otherwise take gigabytes and minutes.
    """
    grid, ranges = _pattern_ranges(pattern)
    count = math.prod(r.stop - r.start for r in ranges)
    if count > limit:
        raise ValueError(
            f"expert pattern {pattern!r} names {count:,} experts, more than the limit of {limit:,}"
        )
    return [str(ExpertUID(grid, coords)) for coords in itertools.product(*ranges)]


def _pattern_ranges(pattern: str) -> tuple[str, list[range]]:
    grid, _, rest = pattern.partition(".")
    parts = rest.split(".") if rest else []
    if not re.fullmatch(_PREFIX, grid) or not parts or not all(_PATTERN_PART.match(p) for p in parts):
        raise ValueError(
            f"invalid expert pattern {pattern!r}: expected e.g. 'ffn.[0:8].[0:16]' or 'ffn.3.[0:4]'"
        )
    ranges = []
    for part in parts:
        if part.startswith("["):
            start, stop = map(int, part[1:-1].split(":"))
            if stop <= start:
                raise ValueError(f"invalid expert pattern {pattern!r}: empty range {part}")
            ranges.append(range(start, stop))
        else:
            ranges.append(range(int(part), int(part) + 1))
    return grid, ranges
