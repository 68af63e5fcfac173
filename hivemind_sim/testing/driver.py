"""Drive a simulated swarm step by step, every action a scenario event, so any run replays.

A property test needs to act on a swarm between checks: crash this peer, store that key, let
ten seconds pass, look at every routing table. ``SwarmDriver`` opens a scenario run
(``scenario.run.runner.open_run``), joins its peers, and then applies each action as a scenario
event at the current simulated time through ``Timeline.apply_at_now`` (the timeline's own code
path). ``driver.scenario()`` is therefore the base scenario plus the events applied, and
``hivemind-sim run`` on it (``replay.to_yaml``) gives the trace digest ``driver.finish()`` gave.

Every action happens on a multiple of ``TICK`` seconds of the measured window: binary fractions
add without rounding, so a replayed event's ``at`` lands on the very instant it was applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter

from hivemind_core.dht import DHTNode

from ..scenario.format import schema
from ..scenario.run.peers import ScenarioPeers
from ..scenario.run.runner import open_run
from ..swarms.dht_swarm import DHTSwarm
from ..world.simulation import Simulation

TICK = 2.0**-10
"""Actions happen on multiples of this many seconds (see the module docstring)."""

_EVENT: TypeAdapter[Any] = TypeAdapter(schema.Event)


class SwarmDriver:
    """A scenario run driven action by action in virtual time (see the module docstring).

    ``base`` describes the world and its peers; it must have no churn and no continuous workload
    (their random timing would not depend on the actions, but their end would, so a replay of a
    shorter run could differ). ``horizon``: the longest measured time the driver may reach.
    Use it as a context manager, or call ``close()``.
    """

    def __init__(self, base: schema.Scenario, *, horizon: float = 3600.0) -> None:
        problems = undrivable(base)
        if problems:
            raise ValueError(f"scenario {base.name!r} cannot be driven: " + "; ".join(problems))
        self.base = base
        self.horizon = horizon
        self.errors: list[tuple[str, str, BaseException | None]] = []
        """(peer, what it was doing, the exception) for every peer failure so far."""
        self._digest: str | None = None
        self._ended_at: float | None = None
        # the latest event's time: the run ends after it (a scenario's events come before its end)
        self._last_at = max((event.at for event in base.events), default=0.0)
        self._applied_at = -TICK  # the latest applied event's time: the next one comes a tick later
        self._stack = contextlib.ExitStack()
        planned = base.model_copy(update={"duration": horizon, "assertions": ()})
        self.run = self._stack.enter_context(open_run(planned))
        self._stack.enter_context(_capture_peer_errors(self.errors))
        try:
            self.sim.run(self.run.begin())
        except BaseException:
            self._stack.close()
            raise

    # ---- what the run is made of -----------------------------------------------------------------

    @property
    def sim(self) -> Simulation:
        return self.run.sim

    @property
    def peers(self) -> ScenarioPeers:
        return self.run.peers

    @property
    def swarm(self) -> DHTSwarm:
        return self.run.peers.swarm

    @property
    def now(self) -> float:
        """Measured-window time in seconds (0 when the warmup ended)."""
        return self.run.clock()

    @property
    def finished(self) -> bool:
        return self._ended_at is not None

    def names(self, group: str | None = None) -> list[str]:
        """Every peer of the scenario (or of one group), alive or not, in declaration order."""
        return [n for n, p in self.peers.placements.items() if group is None or p.group.group == group]

    def live(self, group: str | None = None) -> list[str]:
        """The peers up now, in declaration order."""
        return self.peers.alive(self.names(group))

    def node(self, name: str) -> DHTNode:
        """The live DHT node of peer ``name`` (KeyError if it is down)."""
        return self.swarm.nodes[name]

    def nearest_live(self, target: int, k: int, *, exclude: int | None = None) -> list[int]:
        """The oracle: ids of the ``k`` live peers truly nearest to ``target`` (see ``DHTSwarm``)."""
        return self.swarm.nearest_live(target, k, exclude=exclude)

    def events(self) -> list[schema.Event]:
        """The events applied (and those the base scheduled), in index order."""
        return list(self.run.timeline.events)

    def outcomes(self, index: int) -> list[Any]:
        """The ``Outcome`` of each selected peer for operation event ``index``."""
        return list(self.run.timeline.outcomes.get(index, []))

    # ---- time ----------------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass (rounded up to the next ``TICK``)."""
        if seconds < 0:
            raise ValueError(f"cannot go back in time ({seconds} s)")
        self._to(self._tick(self.now + seconds))

    def _tick(self, t: float) -> float:
        return math.ceil(t / TICK - 1e-9) * TICK

    def _to(self, t: float) -> None:
        self._check_open()
        if t > self.horizon:
            raise ValueError(f"the driver's horizon is {self.horizon} s; {t:.3f} s is past it")
        self.sim.run(self.run.advance_to(self.run.start + t))

    # ---- actions: each one scenario event, applied now ------------------------------------------

    def apply(self, event: Mapping[str, Any] | schema.Event) -> int:
        """Apply ``event`` (a model, or the dict a scenario file would hold, without ``at``) at the
        next tick and return its index; an operation event has completed when this returns.

        Two events never share a tick: a scenario file's events due at one instant may start in
        any order (asyncio's timer heap does not keep ties in order), the driver's in sequence."""
        self._check_open()
        at = max(self._tick(self.now), self._applied_at + TICK)
        self._to(at)
        data = dict(event.model_dump() if not isinstance(event, Mapping) else event)
        data["at"] = at
        model = _EVENT.validate_python(data)
        self._applied_at, self._last_at = at, max(self._last_at, at)
        return self.sim.run(self._by_horizon(self.run.timeline.apply_at_now(model), model.action))

    async def _by_horizon(self, work: Coroutine[Any, Any, int], action: str) -> int:
        """``work``'s result; an operation still running at the horizon is a hang, not a slow run
        (the simulated clock would run on for ever while the test waits)."""
        task = asyncio.ensure_future(work)
        await asyncio.wait([task], timeout=self.run.start + self.horizon - self.sim.now)
        if not task.done():
            task.cancel()
            raise RuntimeError(f"a {action} event applied at {self._applied_at:g} s still ran at the horizon")
        return task.result()

    def crash(self, names: Sequence[str], *, duration: float | None = None) -> int:
        """Kill ``names`` without goodbye; they restart after ``duration`` (None: never)."""
        return self.apply(_selecting("crash", names, duration))

    def leave(self, names: Sequence[str], *, duration: float | None = None) -> int:
        """``names`` leave gracefully (hand their records on); back after ``duration``."""
        return self.apply(_selecting("leave", names, duration))

    def freeze(self, names: Sequence[str], *, duration: float | None = None) -> int:
        """``names`` stop answering but keep their connections; resume after ``duration``."""
        return self.apply(_selecting("freeze", names, duration))

    def restart(self, names: Sequence[str]) -> int:
        """``names`` crash and start again at once, with their identity and empty storage."""
        return self.apply(_selecting("restart", names, None))

    def partition(self, sides: Sequence[Sequence[str]], *, duration: float | None = None) -> int:
        """Cut the network into ``sides`` (plus everyone else); healed after ``duration``."""
        event: dict[str, Any] = {"action": "partition", "sides": [{"peers": list(s)} for s in sides]}
        if duration is not None:
            event["duration"] = duration
        return self.apply(event)

    def heal(self) -> int:
        """End every partition now."""
        return self.apply({"action": "heal"})

    def degrade(self, names: Sequence[str], *, duration: float | None = None, **link: Any) -> int:
        """Worsen ``names``' links (``latency=``, ``loss=``, ``bandwidth=``) for ``duration``."""
        return self.apply({**_selecting("degrade", names, duration), **link})

    def hostile(
        self, names: Sequence[str], behaviour: str, *, duration: float | None = None, **options: Any
    ) -> int:
        """Make ``names`` hostile (``behaviour``: see the `hostile` event) for ``duration``."""
        return self.apply({**_selecting("hostile", names, duration), "behaviour": behaviour, **options})

    def misbehave(
        self, names: Sequence[str], output: str, *, duration: float | None = None, **options: Any
    ) -> int:
        """``names``' experts answer ``output`` (nan, garbage, slow, plausible) for ``duration``."""
        return self.apply({**_selecting("misbehave", names, duration), "output": output, **options})

    def store(self, name: str, key: str, *, ttl: float = 300.0, value_size: int = 16) -> Any:
        """Peer ``name`` stores ``key``; returns its ``Outcome`` (None if the peer is down)."""
        event = {**_selecting("store", [name], None), "key": key, "ttl": ttl, "value_size": value_size}
        return self._one(self.apply(event))

    def get(self, name: str, key: str) -> Any:
        """Peer ``name`` reads ``key``; returns its ``Outcome`` (None if the peer is down)."""
        return self._one(self.apply({**_selecting("get", [name], None), "key": key}))

    def lookup(self, name: str, target: int | None = None) -> Any:
        """Peer ``name`` looks ``target`` up (default: drawn from the event's stream)."""
        event = _selecting("lookup", [name], None)
        if target is not None:
            event["target"] = target
        return self._one(self.apply(event))

    def forward(self, name: str) -> Any:
        """Trainer ``name`` runs one DMoE forward and backward; returns its ``Outcome``."""
        return self._one(self.apply(_selecting("forward", [name], None)))

    def _one(self, index: int) -> Any:
        outcomes = self.outcomes(index)
        return outcomes[0] if outcomes else None

    # ---- the end ----------------------------------------------------------------------------------------

    def finish(self) -> str:
        """End the run now (the next tick): undo active faults, stop every peer; the trace digest."""
        if self._digest is None:
            self._check_open()
            at = self._end_time()
            self._to(at)
            self.sim.run(self.run.end_run(at))
            self._ended_at = at
            self._digest = self.sim.digest()
        return self._digest

    def digest(self) -> str:
        """The trace digest of the finished run (``finish()`` first)."""
        if self._digest is None:
            raise RuntimeError("finish() the run first: its digest covers the whole run, its end included")
        return self._digest

    def scenario(self) -> schema.Scenario:
        """The base scenario plus every event applied, lasting as long as was driven: a scenario
        file of it replays this run (to the same digest once finished)."""
        duration = self._ended_at if self._ended_at is not None else self._end_time()
        data = self.base.model_dump(mode="json", exclude_none=True)
        data["events"] = [event.model_dump(mode="json", exclude_none=True) for event in self.events()]
        data["duration"] = duration
        data["sample_interval"] = min(self.base.sample_interval, duration)
        return schema.Scenario.model_validate(data)

    def _end_time(self) -> float:
        """The next tick, at least one after the latest event (a scenario's events precede its end)."""
        return max(self._tick(self.now), self._last_at + TICK)

    def close(self) -> None:
        """Close the simulation (whatever still runs is cancelled)."""
        self._stack.close()

    def __enter__(self) -> SwarmDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._ended_at is not None:
            raise RuntimeError("the run is finished: nothing more can happen in it")
        if self.sim.loop.is_closed():
            raise RuntimeError("the driver is closed")


def undrivable(scenario: schema.Scenario) -> list[str]:
    """Why ``scenario`` cannot be a driver's base (empty: it can)."""
    problems = [f"group {g.group} has churn" for g in scenario.peers if g.churn is not None]
    dht = scenario.workload.dht
    if dht is not None and dht.stores_per_second + dht.gets_per_second + dht.lookups_per_second > 0:
        problems.append("it has a DHT workload (drive store/get/lookup instead)")
    training = scenario.workload.training
    if training is not None and getattr(training, "batches_in_flight", 1) != 0:
        problems.append("its trainers train continuously (set workload.training.batches_in_flight: 0)")
    return problems


def _selecting(action: str, names: Sequence[str], duration: float | None) -> dict[str, Any]:
    event: dict[str, Any] = {"action": action, "select": {"peers": list(names)}}
    if duration is not None:
        event["duration"] = duration
    return event


@contextlib.contextmanager
def _capture_peer_errors(errors: list[tuple[str, str, BaseException | None]]) -> Iterator[None]:
    """Collect, while the run is open, what ``PeerFailures.record`` logs (peer, what, exception)
    and the errors the event loop logs (a task that failed with nobody awaiting it)."""
    handler = _PeerErrors(errors)
    loggers = [logging.getLogger(_FAILURES), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


_FAILURES = "hivemind_sim.scenario.run.failures"


class _PeerErrors(logging.Handler):
    def __init__(self, errors: list[tuple[str, str, BaseException | None]]) -> None:
        super().__init__(logging.ERROR)
        self.errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if record.name == _FAILURES and isinstance(record.args, tuple) and len(record.args) >= 2:
            self.errors.append((str(record.args[0]), str(record.args[1]), error))
        else:
            self.errors.append(("the event loop", record.getMessage(), error))
