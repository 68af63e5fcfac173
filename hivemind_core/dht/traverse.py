"""Iterative parallel Kademlia lookups for many targets at once.

``traverse`` knows nothing about RPCs or storage: it is driven by an ``ask(contact, targets)``
callback that returns what the contact knows about each target (its nearest contacts and any
value found), or None if the contact failed. One call to ``ask`` serves every target that wants
that contact at the same moment, so looking up 256 keys costs about as many RPCs as looking up
a few.

Per target, up to ``alpha`` RPCs are in flight; an RPC that is late stops counting, so one
dead contact does not stall the lookup. ``patience(contact)`` says when an answer from that
contact is late and when the lookup gives up on it (it then no longer counts among the nearest,
so convergence does not wait for it, unless its answer comes while the lookup still runs): the
caller knows each contact's round trips, so a lost message costs a lookup about what that
contact's round trips allow, not a fixed RPC timeout. Without it (or when it says None), an RPC
is late after ``straggler_delay`` and never given up: its answer or failure is waited for. Once
the ``alpha`` nearest contacts known have answered, there is nothing nearer to chase: the rest
of the ``k`` nearest are asked at once (Kademlia's final round), not ``alpha`` at a time. A
target is done when the ``k`` nearest contacts not known to have failed (nor given up) have all
answered, when ``on_found`` says the value found is enough, or when ``max_rpcs`` RPCs have
carried it (the budget is per target, so a batch of many targets converges as well as each
would alone); RPCs to contacts no longer among anyone's nearest are then cancelled, not waited
for.

Contacts that ``skip`` names (the caller's memory of who recently failed it) count as failed
without being asked, and ``on_unanswered`` hears of every contact the lookup was still waiting
for, already late, when its deadline ended it or when it finished without that contact's
answer: so a frozen peer makes one lookup wait (one expected round trip, when the caller knows
it), not every one. ``also_ask`` names contacts to ask in the first round however far they are
from the target, and whose answer (or failure) the target waits for: a node that knows nobody
near a target asks someone who may.

A contact vouches for the contacts it was first to name. While ``DISTRUST_AFTER`` of those keep
the lookup waiting past the straggler delay, no more of them are asked; once that many failed,
more than answered, the rest it named are not asked unless someone else names them too (they
count as failed until then), and ``on_bad_referrer`` hears of it when none of its referrals
answered: a peer answering finds with made-up contacts nobody listens at would otherwise cost a
lookup one RPC timeout per contact it invents, while an honest peer whose table went stale
loses nothing another peer can confirm.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .routing import Contact

logger = logging.getLogger(__name__)

Ask = Callable[[Contact, list[int]], Awaitable[Mapping[int, tuple[Sequence[Contact], Any]] | None]]
OnFound = Callable[[int, Contact, Any], bool]
Skip = Callable[[int], bool]
"""True for a node id the lookup should treat as failed without asking."""
Patience = Callable[[Contact], tuple[float, float] | None]
"""Seconds after which a contact's answer is late, and after which the lookup gives up on it;
None if nothing is known of it."""
_Flight = tuple[Contact, list[int], float, float]
"""An RPC in flight: its contact, its targets, when it is late, when the lookup gives up on it."""
DISTRUST_AFTER = 3
"""Failed referrals (more than answered ones) after which a contact's other referrals are not asked."""


@dataclass
class LookupResult:
    """How one target's lookup ended."""

    nearest: list[Contact]
    """The nearest contacts that answered, closest first (at most k)."""
    finished_early: bool = False
    """``on_found`` ended it before convergence."""
    converged: bool = False
    """The k nearest contacts it knew of (not known to have failed) all answered: what a lookup
    from anywhere else would also find. False when the deadline or the RPC budget ended it, or
    every contact it knew failed."""
    rounds: int = 0
    """Longest chain of RPCs, each asking a contact learned from the previous answer."""
    rpcs: int = 0
    """RPCs that carried this target."""


@dataclass
class _Search:
    target: int
    known: dict[int, Contact] = field(default_factory=dict)
    depth: dict[int, int] = field(default_factory=dict)
    live_by_distance: list[tuple[int, int]] = field(default_factory=list)
    """(distance, node id) of known contacts not known to have failed, nearest first."""
    asked: set[int] = field(default_factory=set)
    awaited: set[int] = field(default_factory=set)
    """Contacts from ``also_ask`` that have neither answered nor failed yet."""
    answered: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    late: set[int] = field(default_factory=set)
    """Contacts given up for being late: out of ``live_by_distance`` until they answer."""
    referrer: dict[int, int] = field(default_factory=dict)
    """Who first named each contact (contacts we started from have none)."""
    referrals: dict[int, list[int]] = field(default_factory=dict)
    """Per referrer: [referrals that answered, referrals that failed]."""
    distrusted: set[int] = field(default_factory=set)
    unconfirmed: set[int] = field(default_factory=set)
    """Contacts only distrusted referrers named: counted as failed until someone else names them."""
    finished: bool = False
    finished_early: bool = False
    converged: bool = False
    rounds: int = 0
    rpcs: int = 0

    def learn(self, contact: Contact, depth: int, skip: Skip | None, referrer: int | None = None) -> None:
        node_id = contact.node_id
        if node_id in self.unconfirmed and referrer is not None and referrer not in self.distrusted:
            self.unconfirmed.discard(node_id)  # someone we still believe names it too
            self.failed.discard(node_id)
            self.referrer[node_id] = referrer
            bisect.insort(self.live_by_distance, (node_id ^ self.target, node_id))
        if node_id in self.known:
            return
        self.known[node_id] = contact
        self.depth[node_id] = depth
        if referrer is not None:
            self.referrer[node_id] = referrer
        if skip is not None and skip(node_id):
            self.failed.add(node_id)
        elif referrer in self.distrusted:
            self.failed.add(node_id)
            self.unconfirmed.add(node_id)
        else:
            bisect.insort(self.live_by_distance, (node_id ^ self.target, node_id))

    def judge_referrer(self, node_id: int, answered: bool) -> int | None:
        """Count ``node_id``'s outcome against whoever named it; the referrer if it is now
        distrusted (its referrals not yet asked then count as failed)."""
        referrer = self.referrer.get(node_id)
        if referrer is None or referrer in self.distrusted:
            return None
        counts = self.referrals.setdefault(referrer, [0, 0])
        counts[0 if answered else 1] += 1
        if counts[1] < DISTRUST_AFTER or counts[1] <= counts[0]:
            return None
        self.distrusted.add(referrer)
        for other, named_by in self.referrer.items():
            if named_by == referrer and other not in self.asked and other not in self.failed:
                self.fail(other)
                self.unconfirmed.add(other)
        return referrer

    def fail(self, node_id: int) -> None:
        if node_id in self.late:
            self.late.discard(node_id)  # already out of live_by_distance
            self.failed.add(node_id)
        elif node_id not in self.failed:
            self.failed.add(node_id)
            self._leave(node_id)

    def give_up(self, node_id: int) -> None:
        """Stop waiting for ``node_id``: late, it no longer counts among the nearest."""
        if node_id not in self.failed and node_id not in self.late and node_id not in self.answered:
            self.late.add(node_id)
            self._leave(node_id)

    def forgive(self, node_id: int) -> None:
        """``node_id`` answered after it was given up: it counts again."""
        if node_id in self.late:
            self.late.discard(node_id)
            bisect.insort(self.live_by_distance, (node_id ^ self.target, node_id))

    def _leave(self, node_id: int) -> None:
        entry = (node_id ^ self.target, node_id)
        del self.live_by_distance[bisect.bisect_left(self.live_by_distance, entry)]

    def frontier(self, k: int) -> list[int]:
        return [node_id for _, node_id in self.live_by_distance[:k]]

    def result(self, k: int) -> LookupResult:
        nearest = heapq.nsmallest(k, self.answered, key=lambda node_id: node_id ^ self.target)
        return LookupResult(
            [self.known[i] for i in nearest], self.finished_early, self.converged, self.rounds, self.rpcs
        )


async def traverse(
    targets: Sequence[int],
    initial: Mapping[int, Sequence[Contact]],
    *,
    ask: Ask,
    k: int,
    alpha: int,
    max_rpcs: int,
    straggler_delay: float,
    patience: Patience | None = None,
    on_found: OnFound | None = None,
    exclude: int | None = None,
    deadline: float | None = None,
    skip: Skip | None = None,
    on_unanswered: Callable[[Contact], None] | None = None,
    also_ask: Mapping[int, Sequence[Contact]] | None = None,
    on_bad_referrer: Callable[[Contact], None] | None = None,
) -> dict[int, LookupResult]:
    """Look up every target; see the module docstring.

    ``exclude`` is never asked (ourselves). At ``deadline`` (loop time) the lookup stops and
    returns what it has.
    """
    searches: dict[int, _Search] = {}
    for target in targets:
        search = searches.setdefault(target, _Search(target))
        for contact in initial.get(target, ()):
            if contact.node_id != exclude:
                search.learn(contact, 0, skip)
    loop = asyncio.get_running_loop()
    inflight: dict[asyncio.Task[Any], _Flight] = {}

    def send(contact: Contact, batch: list[int], now: float) -> None:
        waits = None if patience is None else patience(contact)
        late, give_up = (straggler_delay, math.inf) if waits is None else waits
        inflight[loop.create_task(ask(contact, batch))] = (contact, batch, now + late, now + give_up)

    for contact, batch in _first_asks(searches, also_ask or {}, exclude, skip):
        send(contact, batch, loop.time())
    dropped_at = 0  # finished targets when RPCs were last dropped
    try:
        while True:
            now = loop.time()
            _give_up_late(searches, inflight, now)
            batches = _plan(searches, inflight, now, k=k, alpha=alpha, max_rpcs=max_rpcs)
            for contact, batch in batches:
                send(contact, batch, now)
            finished = sum(search.finished for search in searches.values())
            if finished > dropped_at:  # only a newly finished target makes an RPC useless
                dropped_at = finished
                for contact in _drop_useless(inflight, searches, now):
                    if on_unanswered is not None:
                        on_unanswered(contact)
            if not inflight:
                break
            wake = [t for _, _, late, give_up in inflight.values() for t in (late, give_up) if t > now]
            if deadline is not None:
                if now >= deadline:
                    if on_unanswered is not None:
                        for contact, _, late, _ in inflight.values():
                            if now >= late:
                                on_unanswered(contact)
                    break
                wake.append(deadline)
            done, _ = await asyncio.wait(
                inflight, timeout=min(wake) - now if wake else None, return_when=asyncio.FIRST_COMPLETED
            )
            for task in [task for task in inflight if task in done]:  # set order is not reproducible
                contact, batch, _, _ = inflight.pop(task)
                response = _answer(task, contact)
                _absorb(searches, contact, batch, response, on_found, exclude, skip, on_bad_referrer)
    finally:
        for task in inflight:
            task.cancel()
    return {target: search.result(k) for target, search in searches.items()}


def _answer(task: asyncio.Task[Any], contact: Contact) -> Any:
    """The task's answer; an ``ask`` that raised counts as that contact failing, not the lookup."""
    try:
        return task.result()
    except Exception:
        logger.exception("asking %s failed unexpectedly; the lookup goes on without it", contact.endpoint)
        return None


def _first_asks(
    searches: dict[int, _Search],
    also_ask: Mapping[int, Sequence[Contact]],
    exclude: int | None,
    skip: Skip | None,
) -> list[tuple[Contact, list[int]]]:
    """The ``also_ask`` contacts, each with the targets to ask it about, marked as awaited."""
    batches: dict[int, tuple[Contact, list[int]]] = {}
    for target, contacts in also_ask.items():
        search = searches[target]
        for contact in contacts:
            node_id = contact.node_id
            if node_id == exclude or node_id in search.asked or (skip is not None and skip(node_id)):
                continue
            search.learn(contact, 0, skip)
            search.asked.add(node_id)
            search.awaited.add(node_id)
            search.rpcs += 1
            batches.setdefault(node_id, (contact, []))[1].append(target)
    return list(batches.values())


def _give_up_late(
    searches: dict[int, _Search], inflight: dict[asyncio.Task[Any], _Flight], now: float
) -> None:
    """Give up on the contacts whose patience ran out (see the module docstring)."""
    for contact, batch, _, give_up in inflight.values():
        if give_up <= now:
            for target in batch:
                searches[target].give_up(contact.node_id)


def _plan(
    searches: dict[int, _Search],
    inflight: dict[asyncio.Task[Any], _Flight],
    now: float,
    *,
    k: int,
    alpha: int,
    max_rpcs: int,
) -> list[tuple[Contact, list[int]]]:
    """Which contacts to ask next, each with the targets it should be asked about."""
    active: dict[int, int] = {}
    stalled: dict[tuple[int, int | None], int] = {}  # (target, referrer): its referrals straggling
    for contact, batch, late, _ in inflight.values():
        if late > now:  # the same test that schedules the wake-up in traverse
            for target in batch:
                active[target] = active.get(target, 0) + 1
        else:
            for target in batch:
                key = (target, searches[target].referrer.get(contact.node_id))
                stalled[key] = stalled.get(key, 0) + 1
    batches: dict[int, tuple[Contact, list[int]]] = {}
    for search in searches.values():
        if search.finished:
            continue
        frontier = search.frontier(k)
        if not search.awaited and all(node_id in search.answered for node_id in frontier):
            search.finished = True
            search.converged = bool(search.answered) or not search.known  # alone: trivially
            continue
        if all(node_id in search.answered for node_id in frontier[:alpha]):
            slots = k  # the nearest answered: nothing nearer to chase, ask the rest at once
        else:
            slots = alpha - active.get(search.target, 0)
        for node_id in frontier:
            if slots <= 0:
                break
            if search.rpcs >= max_rpcs:
                break
            if node_id in search.asked:
                continue
            referrer = search.referrer.get(node_id)
            if referrer is not None and stalled.get((search.target, referrer), 0) >= DISTRUST_AFTER:
                continue  # wait until one of what it named answers or fails
            search.asked.add(node_id)
            search.rpcs += 1
            slots -= 1
            batches.setdefault(node_id, (search.known[node_id], []))[1].append(search.target)
    return list(batches.values())


def _drop_useless(
    inflight: dict[asyncio.Task[Any], _Flight], searches: dict[int, _Search], now: float
) -> list[Contact]:
    """Cancel RPCs whose every target is already finished; the contacts of those already late."""
    unanswered = []
    for task, (contact, batch, late, _) in list(inflight.items()):
        if all(searches[target].finished for target in batch):
            task.cancel()
            del inflight[task]
            if late <= now:
                unanswered.append(contact)
    return unanswered


def _absorb(
    searches: dict[int, _Search],
    contact: Contact,
    batch: list[int],
    response: Mapping[int, tuple[Sequence[Contact], Any]] | None,
    on_found: OnFound | None,
    exclude: int | None,
    skip: Skip | None,
    on_bad_referrer: Callable[[Contact], None] | None,
) -> None:
    for target in batch:
        search = searches[target]
        search.awaited.discard(contact.node_id)
        if search.finished:
            continue
        answered = response is not None and target in response
        referrer = search.judge_referrer(contact.node_id, answered)
        if referrer is not None and on_bad_referrer is not None and search.referrals[referrer][0] == 0:
            on_bad_referrer(search.known[referrer])
        if not answered:
            search.fail(contact.node_id)
            continue
        assert response is not None
        search.forgive(contact.node_id)
        search.answered.add(contact.node_id)
        depth = search.depth[contact.node_id] + 1
        search.rounds = max(search.rounds, depth)
        neighbours, found = response[target]
        for neighbour in neighbours:
            if neighbour.node_id != exclude:
                search.learn(neighbour, depth, skip, contact.node_id)
        if found is not None and on_found is not None and on_found(target, contact, found):
            search.finished = search.finished_early = True
