"""Run a scenario: build its world, run it in virtual time, measure it, judge it, report it.

Time: the simulation starts at 0 with the warmup (peers join; no faults, nothing measured);
the measured window runs from ``warmup`` to ``warmup + duration``, and every time a user sees
(events' ``at``, metrics, plots) counts from its start. Same scenario and seed, same trace
digest and same ``metrics.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from hivemind_core.dht import DHTNode, StoreItem
from hivemind_core.net import TransportError

from ...swarms.baton import Baton
from ...swarms.churn import start_churn
from ...world.simulation import Simulation
from ...world.tcp_model import TcpOptions
from ..format import schema
from ..format.loader import read_churn_trace
from ..format.names import COUNTERS
from ..results.assertions import AssertionResult, evaluate
from ..results.metrics import Recorder
from . import runlog
from .events import Timeline
from .failures import PeerFailures, RunStopped
from .peers import ScenarioPeers, build_topology
from .training import make_dataset

logger = logging.getLogger(__name__)

Progress = Callable[[float, float, dict[str, float]], None]
"""Called with (measured time, duration, live figures) every sample interval, and after each
wave of joins during the warmup (negative times)."""


class WarmupTooShort(RuntimeError):
    """The peers present from the start were still joining when the measured window began."""


@dataclass
class RunResult:
    scenario: schema.Scenario
    recorder: Recorder
    results: list[AssertionResult]
    digest: str
    wall_s: float
    stopped: str | None = None
    """Why the run ended before the end of its window (None: it ran to the end)."""

    @property
    def failed(self) -> bool:
        """An assertion failed or could not be judged (unknown is not a pass)."""
        return any(result.status != "pass" for result in self.results)


def run_scenario(scenario: schema.Scenario, *, progress: Progress | None = None) -> RunResult:
    """Run ``scenario`` to the end (``report.write_run_report`` writes its report).

    A failure of the runner itself does not raise: the run stops there, ``stopped`` says why
    (the traceback is logged), and the result holds what was measured until then.
    """
    started = time.perf_counter()
    with open_run(scenario, progress=progress) as run:
        stopped = None
        try:
            run.sim.run(run.main())
        except WarmupTooShort:
            raise
        except RunStopped as error:
            stopped = f"{error} ({_when(run.clock())})"
            logger.error("the run stopped: %s", stopped)
        except Exception as error:
            stopped = f"the runner failed {_when(run.clock())}: {type(error).__name__}: {error} (see run.log)"
            logger.exception("the run stopped: the runner failed")
        recorder, digest = run.recorder, run.sim.digest()
    wall = time.perf_counter() - started
    results = evaluate(scenario.assertions, recorder)
    return RunResult(scenario, recorder, results, digest, wall, stopped)


@contextlib.contextmanager
def open_run(scenario: schema.Scenario, *, progress: Progress | None = None) -> Iterator[_Run]:
    """A run of ``scenario``, built but not started: ``run.sim.run(run.main())`` runs it whole;
    ``begin``, ``advance_to``, ``timeline.apply_at_now`` and ``end_run`` drive it step by step (the
    property-testing driver). The simulation closes when the block ends."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible training, whatever the machine's core count
    try:
        topology = build_topology(scenario.topology, seed=scenario.seed)
        spec = scenario.topology
        tcp = TcpOptions(handshake=spec.tcp.handshake, retransmit=spec.tcp.retransmit)
        with Simulation(
            seed=scenario.seed, topology=topology, jitter=spec.jitter, loss=spec.loss, tcp=tcp
        ) as sim:
            recorder = Recorder(scenario.sample_interval, duration=scenario.duration)
            for name in COUNTERS:
                recorder.count(name, 0.0, 0)  # zero, not unknown, when nothing happens
            start, end = scenario.warmup, scenario.warmup + scenario.duration
            training = scenario.workload.training
            dataset = None
            if training is not None:
                dataset = make_dataset(training.dataset, training.model.hidden_dim, seed=scenario.seed)
            clock = lambda: sim.now - start  # noqa: E731  # measured-window time
            failures = PeerFailures(recorder, clock)
            baton = Baton()
            peers = ScenarioPeers(
                scenario, sim, recorder=recorder, failures=failures, baton=baton, dataset=dataset, clock=clock
            )
            run = _Run(scenario, sim, peers, recorder, failures, start=start, end=end, progress=progress)
            with runlog.simulated_time(clock):
                yield run
    finally:
        torch.set_num_threads(threads)


def _when(t: float) -> str:
    """ "at 57.3 s" into the measured window, or "during the warmup"."""
    return "during the warmup" if t < 0 else f"at {t:.1f} s"


class _Run:
    """One run's tasks: joins, churn, events, workload and the sampler."""

    def __init__(
        self,
        scenario: schema.Scenario,
        sim: Simulation,
        peers: ScenarioPeers,
        recorder: Recorder,
        failures: PeerFailures,
        *,
        start: float,
        end: float,
        progress: Progress | None,
    ) -> None:
        self.scenario = scenario
        self.sim = sim
        self.peers = peers
        self.recorder = recorder
        self.failures = failures
        self.start, self.end = start, end
        self.progress = progress
        self.timeline = Timeline(peers, recorder, start=start, end=end, spawn=self._spawn)
        self._tasks: list[asyncio.Task[None]] = []
        self._failed: asyncio.Future[None] = sim.loop.create_future()  # a task of the runner's raised
        self._delivered = (0, 0)  # messages and bytes delivered by the last sample
        self._sampled = 0.0  # the last sample's time
        self._trainers: list[asyncio.Future[None]] = []
        peers.on_change = self._alive_changed

    def clock(self) -> float:
        """Measured-window time: 0 at the end of the warmup."""
        return self.sim.now - self.start

    async def main(self) -> None:
        await self.begin()
        await self.advance_to(self.end)
        await self.end_run()

    async def begin(self) -> None:
        """Join the warmup's peers, wait for the window to start, then start churn, crowds, the
        scheduled events, the workload, the sampler and training."""
        await self.peers.join_warmup_groups(on_wave=self._joining)
        if self.sim.now > self.start:
            raise WarmupTooShort(
                f"the peers took {self.sim.now:.0f} s of simulated time to join, longer than the "
                f"{self.start:g} s warmup: raise `warmup` (nothing would be measured as planned)"
            )
        await self._until(self.start)
        self._start_churn()
        for group in self.scenario.peers:
            if group.join_at is not None:
                self._spawn(self._crowd(group))
        self.timeline.schedule(self.scenario.events)
        workload = self.scenario.workload
        if workload.dht is not None:
            self._spawn(self._dht_workload(workload.dht))
        stats = self.sim.network.stats
        self._delivered = (stats.delivered, stats.bytes_delivered)  # the warmup is not measured
        self._spawn(self._sample())
        self._trainers = self._start_training()

    async def advance_to(self, t: float) -> None:
        """Let the run go on until simulated time ``t``; raises if one of the runner's tasks fails."""
        await self._until(t)

    async def end_run(self, at: float | None = None) -> None:
        """End the window now, ``at`` measured seconds (default: its planned end): the last sample,
        undo every active fault, stop training and peers."""
        self._sample_at(self.end - self.start if at is None else at)
        self.peers.on_change = lambda name: None  # the window is over: what stops now is not measured
        await self.timeline.finish()
        for trainer in self.peers.trainers.values():
            trainer.finish()
        await asyncio.gather(*self._trainers)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.peers.swarm.stop()

    def _joining(self) -> None:
        """Progress while the warmup's peers join (a 10,000-peer swarm takes a while)."""
        if self.progress is not None:
            alive = {"peers.alive": float(len(self.peers.swarm.nodes))}
            self.progress(self.sim.now - self.start, self.end - self.start, alive)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start one of the runner's own tasks: if it raises, the run stops (see ``_until``)."""
        task = self.sim.loop.create_task(coroutine)
        self._tasks.append(task)
        task.add_done_callback(self._check)
        return task

    def _check(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not self._failed.done():
            self._failed.set_exception(task.exception())  # type: ignore[arg-type]

    async def _until(self, t: float) -> None:
        """Wait until simulated time ``t``, unless one of the runner's tasks fails first."""
        timer = self.sim.loop.create_task(asyncio.sleep(max(0.0, t - self.sim.now)))
        await asyncio.wait([timer, self._failed], return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        if self._failed.done():
            self._failed.result()  # raises the task's exception

    # ---- peers coming and going ------------------------------------------------------------------------

    async def _crowd(self, group: schema.PeerGroup) -> None:
        assert group.join_at is not None
        await asyncio.sleep(group.join_at)
        await self.peers.join_crowd(group)

    def _start_churn(self) -> None:
        swarm = self.peers.swarm
        live = self.peers.live_count  # kept at each change: no pass over a group per churn event
        for group in self.scenario.peers:
            churn = group.churn
            if churn is None:
                continue
            names = group.peer_names()
            if churn.trace is not None:
                self._spawn(self._replay(group, names))
                continue
            assert churn.session is not None and churn.downtime is not None
            model = churn.model()

            def leave(
                address: str, graceful: bool, name: str = group.group, churn: schema.Churn = churn
            ) -> None:
                if live[name] > churn.min_alive:
                    swarm.depart(address, graceful)

            def join(address: str, name: str = group.group, churn: schema.Churn = churn) -> None:
                if churn.max_alive is None or live[name] < churn.max_alive:
                    swarm.come_back(address)

            start_churn(
                self.sim, names, model, leave=leave, join=join, until=self.end, stream=f"churn/{group.group}"
            )

    async def _replay(self, group: schema.PeerGroup, names: list[str]) -> None:
        """A churn trace: peers are up exactly during their sessions."""
        assert group.churn is not None
        swarm, rng = self.peers.swarm, self.sim.random(f"churn/{group.group}")
        sessions = read_churn_trace(group)
        up_at_start = {s.peer for s in sessions if s.join <= 0 and (s.leave is None or s.leave > 0)}
        for name in names:
            if name not in up_at_start:
                swarm.depart(name, False)
        changes = sorted(
            [(s.join, 1, s.peer) for s in sessions if s.join > 0]
            + [(s.leave, 0, s.peer) for s in sessions if s.leave is not None and s.leave > 0]
        )
        for at, joining, peer in changes:
            await asyncio.sleep(max(0.0, self.start + at - self.sim.now))
            if joining:
                swarm.come_back(peer)
            elif peer in swarm.nodes:
                swarm.depart(peer, rng.random() < group.churn.graceful)

    # ---- workload --------------------------------------------------------------------------------------

    def _requesters(self) -> list[str]:
        roles = {"dht", "peer"}
        names = [n for n, p in self.peers.placements.items() if p.group.role in roles]
        return names or list(self.peers.placements)

    async def _dht_workload(self, spec: schema.DHTWorkload) -> None:
        """Poisson stores and gets over the whole network; gets ask for acknowledged keys, the
        most popular first (rank = order of first acknowledgement)."""
        rng = self.sim.random("workload/dht")
        requesters = self.peers.tracked(self._requesters())
        rate = spec.stores_per_second + spec.gets_per_second + spec.lookups_per_second
        if rate <= 0:
            return
        acknowledged: list[int] = []
        known: set[int] = set()
        value = b"v" * int(spec.value_size)
        popular = spec.popularity.sampler(spec.keys)
        while True:
            await asyncio.sleep(rng.expovariate(rate))
            if not requesters:
                continue
            name = rng.choice(requesters)
            node = self.peers.swarm.nodes[name]
            kind = rng.random() * rate
            if kind < spec.stores_per_second:
                key = popular(rng)
                self._spawn(self._store(name, node, key, value, spec.ttl, acknowledged, known))
            elif kind < spec.stores_per_second + spec.gets_per_second:
                if acknowledged:
                    rank = popular(rng) % len(acknowledged)
                    self._spawn(self._get(name, node, acknowledged[rank]))
            else:
                self._spawn(self._lookup(name, node, rng.getrandbits(160)))

    # A request's own failure (the requester went down mid-operation: TransportError) is a failed
    # operation; anything else it raises is also the requesting peer's failure (see failures.py).

    async def _store(
        self,
        name: str,
        node: DHTNode,
        key: int,
        value: bytes,
        ttl: float,
        acknowledged: list[int],
        known: set[int],
    ) -> None:
        began, ok = self.sim.now, False
        with self.failures.guard(name, "a DHT store"), contextlib.suppress(TransportError):
            stored = await node.store_many([StoreItem(f"key{key}", value, node.now() + ttl)])
            ok = bool(stored and stored[0])
        self.recorder.event("dht.store", self.sim.now - self.start, ok=ok, latency=self.sim.now - began)
        if ok and key not in known:
            known.add(key)
            acknowledged.append(key)

    async def _get(self, name: str, node: DHTNode, key: int) -> None:
        began, ok = self.sim.now, False
        with self.failures.guard(name, "a DHT get"), contextlib.suppress(TransportError):
            ok = await node.get(f"key{key}") is not None
        self.recorder.event("dht.get", self.sim.now - self.start, ok=ok, latency=self.sim.now - began)

    async def _lookup(self, name: str, node: DHTNode, target: int) -> None:
        """A lookup judged against the oracle: the live peers truly nearest to ``target``."""
        began, result = self.sim.now, None
        with self.failures.guard(name, "a DHT lookup"), contextlib.suppress(TransportError):
            result = (await node.lookup([target]))[target]
        now = self.sim.now
        if result is None:
            self.recorder.event("dht.lookup", now - self.start, ok=False, latency=now - began)
            return
        k = node.config.k
        truth = self.peers.swarm.nearest_live(target, k, exclude=node.node_id)
        found = [contact.node_id for contact in result.nearest]
        self.recorder.event(
            "dht.lookup",
            now - self.start,
            ok=result.converged,
            latency=now - began,
            hops=float(result.rounds),
            top1=float(bool(found) and bool(truth) and found[0] == truth[0]),
            overlap=len(set(found) & set(truth)) / max(1, len(truth)),
        )

    def _start_training(self) -> list[asyncio.Future[None]]:
        training = self.scenario.workload.training
        if training is None or training.batches_in_flight == 0:  # 0: only scripted `forward` events
            return []
        duration = self.end - self.start
        runs = []
        for trainer in self.peers.trainers.values():
            for slot in range(len(trainer.in_flight)):
                step_loop = functools.partial(trainer.train_until, duration, slot)
                runs.append(self.sim.loop.create_task(self.peers.baton.call(step_loop)))
        return runs

    # ---- measuring ------------------------------------------------------------------------------------

    async def _sample(self) -> None:
        """Sample every interval; ``main`` takes the last sample at the window's end itself."""
        interval = self.scenario.sample_interval
        duration = self.end - self.start
        steps = math.ceil(duration / interval - 1e-9)
        for step in range(steps):
            await asyncio.sleep(max(0.0, self.start + step * interval - self.sim.now))
            self._sample_at(step * interval)

    def _sample_at(self, t: float) -> None:
        alive = self.peers.alive()
        for name in alive:
            self.recorder.mark_peer(name)
        self.recorder.gauge("peers.alive", t, len(alive))
        for group, count in self.peers.live_count.items():
            self.recorder.gauge(f"peers.alive.{group}", t, count)
        # what was delivered since the last sample belongs to the interval that began then
        stats, (delivered, delivered_bytes) = self.sim.network.stats, self._delivered
        self.recorder.count("rpc.messages", self._sampled, stats.delivered - delivered)
        self.recorder.count("rpc.bytes", self._sampled, stats.bytes_delivered - delivered_bytes)
        self._delivered, self._sampled = (stats.delivered, stats.bytes_delivered), t
        if self.progress is not None:
            duration = self.end - self.start
            self.progress(t, duration, self.recorder.live(10 * self.scenario.sample_interval))

    def _alive_changed(self, name: str) -> None:
        """A peer went up or down: its group's and the whole swarm's levels, at that moment."""
        t = self.sim.now - self.start
        if t < 0:
            return  # the warmup's joins are not measured
        self.recorder.mark_peer(name)
        group = self.peers.placements[name].group.group
        self.recorder.gauge("peers.alive", t, len(self.peers.swarm.nodes))
        self.recorder.gauge(f"peers.alive.{group}", t, self.peers.live_count[group])
