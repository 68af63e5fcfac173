"""Beam search over the DHT for the best alive experts of a grid, for a whole batch at once.

Dimension by dimension, each sample keeps its ``beam_size`` best coordinate prefixes (score =
sum of the gating logits of its coordinates). The prefixes' alive children come from the DHT
prefix entries (``ffn.`` -> alive first coordinates, ``ffn.4.`` -> alive second coordinates
under 4...), fetched once per distinct prefix for the whole batch and cached for
``cache_ttl`` seconds; each fetch merges the replicas that answer within ``lookup_timeout``.
The last dimension's entries name the expert and its endpoint; experts on banned endpoints or
in ``exclude`` are skipped. No scan of the grid is ever needed.

**Declarations, not addresses.** Each entry is a declaration signed by the peer that made it
(``moe.declare``): unsigned entries and endpoints the transport could not dial are dropped, so
a junk announcement never reaches a call. Several peers may declare the same coordinate; the
newest ``MAX_CANDIDATES`` are kept, and the first one whose endpoint is neither banned nor
known not to hold the declaring key is picked, its key handed to the client to check.

**Stale while revalidate.** A DHT lookup with ``latest`` waits its whole ``lookup_timeout``
whenever one replica is frozen, and a training step does one per grid dimension: refetching
in the step would make every step that slow for as long as the freeze lasts. So an entry
older than ``cache_ttl`` is still served, while one background refresh per prefix (owned by
the client, cancelled by :meth:`MoEBeamSearcher.close`) replaces it; a search waits on the
DHT only for prefixes it has nothing usable for: never fetched, or older than
``max_staleness``, or when the caller asks for ``fresh`` entries after failures.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from ..declare import Declaration, parse_child, recency
from ..uid import prefix_of
from .arguments import check_timeout
from .client import MoEClient
from .lists import bools, longs

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 4
"""Declarations kept per coordinate (the newest): others are only tried once these fail."""

Children = dict[int, tuple[Declaration, ...]]
"""A prefix's alive next coordinates: coordinate -> its declarations, newest first."""


@dataclass(frozen=True, slots=True)
class Choice:
    """One expert chosen for a sample."""

    uid: str
    endpoint: str
    coords: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Cached:
    """A prefix's entry in the searcher's cache."""

    fetched: float
    """Loop time its fetch began."""
    children: Children
    alive: torch.Tensor
    """[grid_size of its dimension] bool: which coordinates have children."""


class _Usable:
    """Which declarations one search may call: each endpoint is judged once per search, not
    once per sample and beam."""

    def __init__(self, client: MoEClient, exclude: Collection[str]) -> None:
        self.client = client
        self.exclude = exclude
        self._endpoints: dict[tuple[str, bytes], bool] = {}
        self._picked: dict[Declaration, None] = {}

    def of(self, children: Children) -> dict[int, Declaration]:
        """Each coordinate's newest declaration that may be called (coordinates with none left out)."""
        found = {}
        for coordinate, declared in children.items():
            for entry in declared:
                if entry.uid not in self.exclude and self._callable(entry.endpoint, entry.owner):
                    found[coordinate] = entry
                    break
        return found

    def _callable(self, endpoint: str, owner: bytes) -> bool:
        known = self._endpoints.get((endpoint, owner))
        if known is None:
            known = not self.client.is_banned(endpoint) and not self.client.refused(endpoint, owner)
            self._endpoints[endpoint, owner] = known
        return known


class MoEBeamSearcher:
    """Finds the top-k alive experts of ``grid`` for each sample's gating scores."""

    def __init__(
        self,
        client: MoEClient,
        grid: str,
        grid_size: Sequence[int],
        *,
        cache_ttl: float = 2.0,
        max_staleness: float = 30.0,
        lookup_timeout: float = 1.0,
    ) -> None:
        if not grid_size or not all(type(size) is int and size >= 1 for size in grid_size):
            raise ValueError(f"grid_size must be a non-empty sequence of ints >= 1, got {grid_size!r}")
        check_timeout("cache_ttl", cache_ttl)
        check_timeout("lookup_timeout", lookup_timeout)
        if not cache_ttl <= max_staleness < math.inf:
            raise ValueError(
                f"max_staleness must be finite and >= cache_ttl={cache_ttl}, got {max_staleness}"
            )
        self.client = client
        self.grid = grid
        self.grid_size = list(grid_size)
        self.cache_ttl = cache_ttl
        self.max_staleness = max_staleness
        self.lookup_timeout = lookup_timeout
        self.lookups = 0
        """DHT lookups started (each fetches many prefixes), in the foreground or background."""
        self._cache: dict[str, _Cached] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}  # at most one fetch in flight per prefix

    async def search(
        self,
        logits: Sequence[torch.Tensor],
        k: int,
        *,
        beam_size: int | None = None,
        exclude: Collection[str] = (),
        fresh: bool = False,
    ) -> list[list[Choice]]:
        """Up to ``k`` experts per sample, best first; ``logits[d]`` is [batch, grid_size[d]].

        ``fresh`` waits for current prefix entries instead of serving cached ones (a retry
        after failures wants them).
        """
        if len(logits) != len(self.grid_size):
            raise ValueError(
                f"expected gating logits for {len(self.grid_size)} grid dimensions, got {len(logits)}"
            )
        beam_size = max(beam_size or 2 * k, k)
        batch = logits[0].shape[0]
        beams = torch.zeros(batch, 1, 0, dtype=torch.long)  # [batch, beam, dims so far]
        scores = torch.zeros(batch, 1)
        last = len(logits) - 1
        usable = _Usable(self.client, exclude)
        finals: list[dict[int, Declaration]] = []
        for d, dim_logits in enumerate(logits):
            which, prefixes = await self._prefixes_of(beams, fresh=fresh)
            if d < last:  # experts themselves are only known at the last dimension
                alive = torch.stack([self._cache[prefix].alive for prefix in prefixes])
            else:  # rule out the excluded and banned ones before ranking, so they never crowd out the rest
                finals = [usable.of(self._cache[prefix].children) for prefix in prefixes]
                alive = bools([[c in final for c in range(self.grid_size[d])] for final in finals])
            candidates = scores[:, :, None] + dim_logits.detach().float().cpu()[:, None, :]
            candidates = candidates.masked_fill(~alive[which], float("-inf"))
            width = min(beam_size, candidates[0].numel())
            scores, flat = candidates.flatten(1).topk(width, dim=1)
            parent, coordinate = flat // self.grid_size[d], flat % self.grid_size[d]
            beams = torch.cat(
                [beams.gather(1, parent[:, :, None].expand(-1, -1, d)), coordinate[:, :, None]], 2
            )
            which = which.gather(1, parent)  # each new beam's prefix: its parent's
        if fresh:  # the experts are read from a second fetch of the last prefixes, as they always were
            await self._fetch(prefixes, dimension=last, fresh=True)
            usable = _Usable(self.client, exclude)
            finals = [usable.of(self._cache[prefix].children) for prefix in prefixes]
        owners, paths, ranked = which.tolist(), beams.tolist(), scores.tolist()
        chosen: list[list[Choice]] = []
        picked: list[Declaration] = []
        for s in range(batch):
            picks: list[Choice] = []
            for b, coords in enumerate(paths[s]):
                if len(picks) == k or ranked[s][b] == float("-inf"):
                    break
                entry = finals[owners[s][b]].get(coords[-1])
                if entry is not None:
                    picked.append(entry)
                    picks.append(Choice(entry.uid, entry.endpoint, tuple(coords)))
            chosen.append(picks)
        # the client must check each pick's key; told once per expert, in the order of its last
        # pick (the order its bounded table would have had, told once per pick)
        for entry in reversed(dict.fromkeys(reversed(picked))):
            self.client.expect_owner(entry.uid, entry.endpoint, entry.owner)
        return chosen

    async def close(self) -> None:
        """Cancel the background refreshes still running (their results are no longer wanted)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _prefixes_of(self, beams: torch.Tensor, *, fresh: bool) -> tuple[torch.Tensor, list[str]]:
        """The distinct prefixes in ``beams`` (fetched into the cache), and for each (sample,
        beam) the index of its prefix in that list (so the work per prefix is done once, not
        per row)."""
        rows = [tuple(coords) for coords in beams.flatten(0, 1).tolist()]
        distinct = {coords: i for i, coords in enumerate(dict.fromkeys(rows))}
        prefixes = [prefix_of(self.grid, coords) for coords in distinct]
        await self._fetch(prefixes, dimension=beams.shape[2], fresh=fresh)
        which = longs([distinct[coords] for coords in rows])
        return which.view(beams.shape[0], beams.shape[1]), prefixes

    async def _fetch(self, prefixes: list[str], *, dimension: int, fresh: bool) -> None:
        """Have the children of ``prefixes`` (all of one grid dimension) in the cache: cached
        ones at once, while stale ones are refreshed in the background; waits only for those
        with nothing usable."""
        now = asyncio.get_running_loop().time()
        needed, stale = [], []
        for prefix in prefixes:
            fetched = self._cache[prefix].fetched if prefix in self._cache else -math.inf
            if fresh or now - fetched >= self.max_staleness:
                needed.append(prefix)
            elif now - fetched >= self.cache_ttl:
                stale.append(prefix)
        idle = [prefix for prefix in needed + stale if prefix not in self._refreshing]
        if idle:
            if self.client.dht is None:
                raise RuntimeError("searching for experts needs a DHT node")
            self.lookups += 1
            task = self.client.spawn(self._refresh(idle, dimension), name=f"refresh {self.grid} prefixes")
            self._refreshing.update(dict.fromkeys(idle, task))
            task.add_done_callback(lambda done, idle=idle: self._forget(idle, done))
        if needed:
            # deduplicated in the order of ``needed``: a set would raise whichever failure sits
            # first in memory, a different one from run to run
            waits = list(dict.fromkeys(self._refreshing[prefix] for prefix in needed))
            await asyncio.wait(waits)  # a shared fetch: a cancelled caller leaves it running for others
            for task in waits:
                if task.cancelled():
                    raise RuntimeError(f"the search of grid {self.grid!r} was closed while it waited")
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    async def _refresh(self, prefixes: list[str], dimension: int) -> None:
        """Fetch the prefix entries from the DHT into the cache; ends within ``lookup_timeout``."""
        assert self.client.dht is not None
        started = asyncio.get_running_loop().time()
        # latest: merge each prefix's dictionary across its replicas, as a replica may lack the
        # subkeys a server announced before that replica joined; the timeout keeps a frozen
        # replica from stalling it (what answered by then is used)
        found = await self.client.dht.get_many(prefixes, latest=True, timeout=self.lookup_timeout)
        size = self.grid_size[dimension]
        for prefix, value in zip(prefixes, found, strict=True):
            entries = value.value if value is not None and isinstance(value.value, dict) else {}
            children = self._children(prefix, entries, dimension)
            alive = bools([coordinate in children for coordinate in range(size)])
            self._cache[prefix] = _Cached(started, children, alive)

    def _forget(self, prefixes: list[str], task: asyncio.Task[None]) -> None:
        """A refresh ended (done, failed or cancelled, even before it started): others may begin."""
        for prefix in prefixes:
            if self._refreshing.get(prefix) is task:
                del self._refreshing[prefix]

    def _children(self, prefix: str, entries: dict, dimension: int) -> Children:
        """The valid declarations of one prefix: for at most ``grid_size[dimension]``
        coordinates, the newest ``MAX_CANDIDATES`` each, naming an expert under ``prefix`` + its
        coordinate at an endpoint that can be dialed (anything else is ignored)."""
        check = self.client.rpc.transport.check_endpoint
        found: dict[int, list[Declaration]] = {}
        for subkey, item in entries.items():
            child = parse_child(subkey, item, check)
            if child is None or not 0 <= child[0] < self.grid_size[dimension]:
                continue
            coordinate, declared = child
            path = f"{prefix}{coordinate}"
            if declared.uid == path or declared.uid.startswith(path + "."):
                found.setdefault(coordinate, []).append(declared)
        return {
            coordinate: tuple(sorted(declared, key=recency, reverse=True)[:MAX_CANDIDATES])
            for coordinate, declared in sorted(found.items())
        }
