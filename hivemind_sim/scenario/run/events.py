"""A scenario's timeline: each event acts on the peers its selector picks, at its time, and is
undone when its ``duration`` ends (every fault still active is undone when the run ends).

Process faults (crash, leave, freeze, restart, slow compute, misbehaving experts, hostile
peers) and scripted operations (store, get, lookup, forward) pick among the peers alive at that
moment; network faults (partition, degrade) among all peers. An operation is over when every
selected peer has done it; its outcomes are kept per peer in ``Timeline.outcomes``.

``apply_at_now`` runs an event at once through the same path as a scheduled one, so a driver
that applies events one by one and a scenario file that lists them at the same times replay
the same run.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ...swarms import faults, hostile
from ...world.network import AccessLink
from ..format import schema
from ..results.metrics import Recorder
from .operations import Operations, Outcome
from .peers import ScenarioPeers

__all__ = ("Outcome", "Timeline", "event_name")

Undo = Callable[[], Awaitable[None]]


def event_name(index: int, event: schema.Event) -> str:
    """The name reports and assertions use: the event's own, or ``<action>-<index>``."""
    return event.name or f"{event.action}-{index}"


Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class Timeline:
    """Runs a scenario's events in virtual time, with ``start`` the measured window's start.

    Each event runs as a task that ``spawn`` starts (the runner's: an event that fails stops the
    run); what an event sets off on a peer (its crash, leave or restart) runs as that peer's work.
    """

    def __init__(
        self, peers: ScenarioPeers, recorder: Recorder, *, start: float, end: float, spawn: Spawn
    ) -> None:
        self.peers = peers
        self.sim = peers.sim
        self.recorder = recorder
        self.start = start
        self.end = end
        self.spawn = spawn
        self.events: list[schema.Event] = []
        """Every event scheduled or applied, in index order (what a replay writes out)."""
        self.outcomes: dict[int, list[Outcome]] = {}
        """Per operation event's index, one outcome per selected peer (in selection order)."""
        self._operations = Operations(peers, start=start)
        self._active: dict[int, Undo] = {}
        self._degrades: dict[str, tuple[AccessLink, dict[int, schema.DegradeEvent]]] = {}
        """Per degraded peer: its own link, and the degrades active on it (by event index)."""
        self._tasks: list[asyncio.Task[None]] = []

    def schedule(self, events: tuple[schema.Event, ...]) -> None:
        for event in events:
            index = self._add(event)
            self._tasks.append(self.spawn(self._run(index, event)))

    async def apply_at_now(self, event: schema.Event) -> int:
        """Run ``event`` now (its ``at`` should be now, in window time) and return its index;
        an operation is over when this returns, a fault's undo waits for its ``duration``."""
        index = self._add(event)
        applied: asyncio.Future[None] = self.sim.loop.create_future()
        task = self.spawn(self._run(index, event, applied))  # as a scheduled event runs
        self._tasks.append(task)
        await asyncio.wait([applied, task], return_when=asyncio.FIRST_COMPLETED)
        if not applied.done():
            task.result()  # it failed before the event was applied: raise why
        return index

    def _add(self, event: schema.Event) -> int:
        self.events.append(event)
        return len(self.events) - 1

    async def finish(self) -> None:
        """Undo every fault still active, in the order they began."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for index in sorted(self._active):
            await self._active.pop(index)()
        await self._operations.close()

    async def _run(
        self, index: int, event: schema.Event, applied: asyncio.Future[None] | None = None
    ) -> None:
        """Apply ``event`` at its time (now, when ``applied`` is given: it is set once the event
        is applied) and undo it after its ``duration``."""
        if applied is None:
            await asyncio.sleep(max(0.0, self.start + event.at - self.sim.now))
        name = event_name(index, event)
        undo = await self._apply(index, event)
        duration = event.duration
        ends = None if duration is None else min(event.at + duration, self.end - self.start)
        self.recorder.window(name, event.action, event.at, ends if undo is not None else event.at)
        if applied is not None:
            applied.set_result(None)
        if undo is None:
            return
        self._active[index] = undo
        if duration is not None:
            await asyncio.sleep(duration)
            await self._active.pop(index)()

    async def _apply(self, index: int, event: schema.Event) -> Undo | None:
        peers, network = self.peers, self.sim.network
        if isinstance(event, schema.PartitionEvent):
            sides: list[set[str]] = []
            for side in event.sides:  # a peer two sides select stays on the first
                sides.append(set(self._select(index, side, alive=False)).difference(*sides))
            rest = set(peers.placements).difference(*sides)
            network.partition([side for side in (*sides, rest) if side])
            return _async(network.heal)
        if isinstance(event, schema.HealEvent):
            network.heal()
            return None
        chosen = self._select(index, event.select, alive=not isinstance(event, schema.DegradeEvent))
        if isinstance(event, schema.StoreEvent | schema.GetEvent | schema.LookupEvent | schema.ForwardEvent):
            if isinstance(event, schema.ForwardEvent):
                chosen = [name for name in chosen if name in peers.trainers]
            runs = [self._operations.run(index, event, name) for name in chosen]
            self.outcomes[index] = list(await asyncio.gather(*runs))
            return None
        if isinstance(event, schema.CrashEvent | schema.LeaveEvent):
            graceful = isinstance(event, schema.LeaveEvent)
            for name in chosen:
                peers.swarm.depart(name, graceful)
            return self._bring_back(chosen)
        if isinstance(event, schema.RestartEvent):  # the process dies and starts again at once
            for name in chosen:
                peers.swarm.restart(name)
            return None
        if isinstance(event, schema.FreezeEvent):
            for name in chosen:
                network.freeze(name)
            return _async(lambda: [network.thaw(name) for name in chosen])
        if isinstance(event, schema.DegradeEvent):
            return self._degrade(index, chosen, event)
        if isinstance(event, schema.SlowComputeEvent):
            devices = [peers.devices[name] for name in chosen if name in peers.devices]
            for device in devices:
                device.slow_down(event.factor)
            return _async(lambda: [device.restore() for device in devices])
        if isinstance(event, schema.MisbehaveEvent):
            servers = [peers.servers[name] for name in chosen if name in peers.servers]
            for server in servers:
                faults.misbehave(server, output=event.output, seed=self.sim.seed, delay=event.delay)
            return _async(lambda: [faults.behave(server) for server in servers])
        if isinstance(event, schema.HostileEvent):
            undos = [
                hostile.make_hostile(
                    peers,
                    name,
                    event.behaviour,
                    self.sim.random(f"event/{index}/hostile/{name}"),
                    rate=event.rate,
                )
                for name in chosen
            ]
            return _async(lambda: [undo() for undo in undos])
        raise AssertionError(f"unhandled event {event.action}")

    def _bring_back(self, names: list[str]) -> Undo:
        async def undo() -> None:
            for name in names:
                if name in self.peers.swarm.departed:
                    self.peers.swarm.come_back(name)

        return undo

    def _degrade(self, index: int, names: list[str], event: schema.DegradeEvent) -> Undo:
        """Degrade ``names``' links; the undo sets each back to its own link worsened by the
        degrades still active on it (overlapping degrades end in any order and leave it whole)."""
        for name in names:
            self._degrades.setdefault(name, (self.sim.network.link(name), {}))[1][index] = event
            self._set_degraded_link(name)

        async def undo() -> None:
            for name in names:
                del self._degrades[name][1][index]
                self._set_degraded_link(name)

        return undo

    def _set_degraded_link(self, name: str) -> None:
        """Give ``name`` its own link worsened by every degrade active on it, in the order they began."""
        own, active = self._degrades[name]
        link = own
        for event in active.values():
            link = link.degraded(
                extra_latency=event.latency, loss=event.loss, bandwidth_bps=event.bandwidth or math.inf
            )
        if not active:
            del self._degrades[name]
        self.sim.network.set_link(name, link)

    def _select(self, index: int, selector: schema.Selector, *, alive: bool) -> list[str]:
        peers = self.peers
        names = peers.alive() if alive else list(peers.placements)
        placed = [(name, peers.placements[name].group, str(peers.placements[name].region)) for name in names]
        names = [name for name, _, _ in selector.matching(placed)]
        rng = self.sim.random(f"event/{index}")
        if selector.fraction is not None:
            names = sorted(rng.sample(names, round(selector.fraction * len(names))))
        elif selector.count is not None:
            names = sorted(rng.sample(names, min(selector.count, len(names))))
        return names


def _async(action: Callable[[], object]) -> Undo:
    async def undo() -> None:
        action()

    return undo
