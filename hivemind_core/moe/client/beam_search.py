"""Beam search over the DHT for the best alive experts of a grid, for a whole batch at once.

Dimension by dimension, each sample keeps its ``beam_size`` best coordinate prefixes (score =
sum of the gating logits of its coordinates). The prefixes' alive children come from the DHT
prefix entries (``ffn.`` -> alive first coordinates, ``ffn.4.`` -> alive second coordinates
under 4...), fetched once per distinct prefix for the whole batch and cached for
``cache_ttl`` seconds; each fetch merges the replicas that answer within ``lookup_timeout``.
The last dimension's entries name the expert and its endpoint; experts on banned endpoints or
in ``exclude`` are skipped. No scan of the grid is ever needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from ..declare import parse_child
from ..uid import prefix_of
from .client import MoEClient


@dataclass(frozen=True, slots=True)
class Choice:
    """One expert chosen for a sample."""

    uid: str
    endpoint: str
    coords: tuple[int, ...]


class MoEBeamSearcher:
    """Finds the top-k alive experts of ``grid`` for each sample's gating scores."""

    def __init__(
        self,
        client: MoEClient,
        grid: str,
        grid_size: Sequence[int],
        *,
        cache_ttl: float = 2.0,
        lookup_timeout: float = 1.0,
    ) -> None:
        self.client = client
        self.grid = grid
        self.grid_size = list(grid_size)
        self.cache_ttl = cache_ttl
        self.lookup_timeout = lookup_timeout
        self._cache: dict[str, tuple[float, dict[int, tuple[str, str]]]] = {}

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

        ``fresh`` ignores cached prefix entries (a retry after failures wants current ones).
        """
        if fresh:
            self._cache.clear()
        if len(logits) != len(self.grid_size):
            raise ValueError(
                f"expected gating logits for {len(self.grid_size)} grid dimensions, got {len(logits)}"
            )
        beam_size = max(beam_size or 2 * k, k)
        batch = logits[0].shape[0]
        beams = torch.zeros(batch, 1, 0, dtype=torch.long)  # [batch, beam, dims so far]
        scores = torch.zeros(batch, 1)
        last = len(logits) - 1
        for d, dim_logits in enumerate(logits):
            children = await self._children_of(beams)
            available = torch.zeros(batch, beams.shape[1], self.grid_size[d], dtype=torch.bool)
            for (s, b), alive in children.items():
                for coordinate, (uid, endpoint) in alive.items():
                    # experts themselves are only known at the last dimension: rule out the
                    # excluded and banned ones before ranking, so they never crowd out the rest
                    usable = d < last or (uid not in exclude and not self.client.is_banned(endpoint))
                    if coordinate < self.grid_size[d] and usable:
                        available[s, b, coordinate] = True
            candidates = scores[:, :, None] + dim_logits.detach().float().cpu()[:, None, :]
            candidates = candidates.masked_fill(~available, float("-inf"))
            width = min(beam_size, candidates[0].numel())
            scores, flat = candidates.flatten(1).topk(width, dim=1)
            parent, coordinate = flat // self.grid_size[d], flat % self.grid_size[d]
            beams = torch.cat(
                [beams.gather(1, parent[:, :, None].expand(-1, -1, d)), coordinate[:, :, None]], 2
            )
        finals = await self._children_of(beams[:, :, :-1])
        chosen: list[list[Choice]] = []
        for s in range(batch):
            picks: list[Choice] = []
            for b in range(beams.shape[1]):
                if len(picks) == k or scores[s, b] == float("-inf"):
                    break
                coords = tuple(beams[s, b].tolist())
                entry = finals.get((s, b), {}).get(coords[-1])
                if entry is not None and entry[0] not in exclude and not self.client.is_banned(entry[1]):
                    picks.append(Choice(entry[0], entry[1], coords))
            chosen.append(picks)
        return chosen

    async def _children_of(self, beams: torch.Tensor) -> dict[tuple[int, int], dict[int, tuple[str, str]]]:
        """For each (sample, beam) prefix, its alive children: coordinate -> (uid, endpoint)."""
        rows = {
            (s, b): tuple(beams[s, b].tolist()) for s in range(beams.shape[0]) for b in range(beams.shape[1])
        }
        prefixes = {coords: prefix_of(self.grid, coords) for coords in dict.fromkeys(rows.values())}
        known = await self._fetch(list(prefixes.values()))
        return {row: known[prefixes[coords]] for row, coords in rows.items()}

    async def _fetch(self, prefixes: list[str]) -> dict[str, dict[int, tuple[str, str]]]:
        now = asyncio.get_running_loop().time()
        missing = [p for p in prefixes if p not in self._cache or self._cache[p][0] <= now]
        if missing:
            if self.client.dht is None:
                raise RuntimeError("searching for experts needs a DHT node")
            # latest: merge each prefix's dictionary across its replicas, as a replica may lack the
            # subkeys a server announced before that replica joined; the timeout keeps a frozen
            # replica from stalling training (what answered by then is used)
            found = await self.client.dht.get_many(missing, latest=True, timeout=self.lookup_timeout)
            for prefix, value in zip(missing, found, strict=True):
                children: dict[int, tuple[str, str]] = {}
                if value is not None and isinstance(value.value, dict):
                    for coordinate, item in value.value.items():
                        child = parse_child(item.value)
                        if isinstance(coordinate, int) and child is not None:
                            children[coordinate] = child
                self._cache[prefix] = (now + self.cache_ttl, children)
        return {p: self._cache[p][1] for p in prefixes}
