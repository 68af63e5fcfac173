"""Lookups from this node: ``traverse`` driven by the routing table and by ``dht.find`` calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from .calls import FindResult, PeerCalls
from .config import DHTConfig
from .membership import Membership
from .routing import Contact
from .traverse import LookupResult, traverse

AlsoAsk = Callable[[list[int]], Mapping[int, list[Contact]]]
"""Contacts to ask in a lookup's first round however far they are (see ``Joining.also_ask``)."""


class Lookups:
    """Iterative lookups for many targets at once, each contact asked in batches of targets."""

    def __init__(
        self,
        node_id: int,
        *,
        config: DHTConfig,
        membership: Membership,
        calls: PeerCalls,
        also_ask: AlsoAsk,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.membership = membership
        self.calls = calls
        self.also_ask = also_ask

    async def run(
        self,
        targets: list[int],
        *,
        k: int,
        on_found: Callable[[int, Contact, Any], bool] | None = None,
        timeout: float | None = None,
    ) -> dict[int, LookupResult]:
        """Look every target up, converging on its ``k`` nearest nodes; see :func:`traverse`.

        ``timeout`` (at most ``lookup_timeout``) ends it with what it found by then.
        """
        if not targets:
            return {}
        table = self.membership.routing_table
        config = self.config
        loop = asyncio.get_running_loop()
        return await traverse(
            targets,
            {target: table.nearest(target, k) for target in targets},
            also_ask=self.also_ask(targets),
            ask=self._ask,
            k=k,
            alpha=config.alpha,
            max_rpcs=config.max_lookup_rpcs,
            straggler_delay=config.straggler_delay,
            patience=self.calls.patience,
            on_found=on_found,
            exclude=self.node_id,
            deadline=loop.time() + min(config.lookup_timeout, timeout or config.lookup_timeout),
            skip=self.membership.skip(),
            on_unanswered=self.membership.unresponsive,
            on_bad_referrer=self.membership.failed,
        )

    async def _ask(self, contact: Contact, targets: list[int]) -> dict[int, tuple[list[Contact], Any]] | None:
        results: list[dict[int, FindResult]] = []
        for start in range(0, len(targets), self.config.max_batch):
            batch = targets[start : start + self.config.max_batch]
            while batch:  # entries left out to keep an answer small are asked for again
                answer = await self.calls.find(contact, batch)
                if answer is None:
                    return None
                results.append(answer)
                left_out = [target for target, r in answer.items() if r.left_out]
                if len(left_out) == len(batch):  # not one fitted: ask no more
                    break
                batch = left_out
        return {target: (r.nearest, r.entry) for answer in results for target, r in answer.items()}
