"""``hivemind-sim deploy``: a scenario's peers as real processes, measured as ``run`` measures.

Every peer of the (scaled) scenario is a ``hivemind-core`` process of its role, on loopback
(``--local``) or in its own network namespace (``--netns``). Time is the wall clock: the warmup
lets them join, then the measured window runs for ``duration`` seconds. Faults are real:
a crash is SIGKILL, a graceful leave SIGTERM, a freeze SIGSTOP until SIGCONT, a restart a
new process with the same identity and port; churn draws sessions from the scenario's
distributions and applies them the same way. The DHT workload asks live peers for stores, gets
and lookups (lookups judged against the live peers' true nearest ids), and trainers report
every step. Everything lands in the same ``Recorder``, so ``metrics.json``, the plots,
``report.md`` and the assertions are those of a simulated run.

The peers are placed as the simulator places them (same seed, same regions and access links),
and each is given its one-way delays to every other peer, which its TCP transport holds back on
the connections it dials, both ways (``--emulate-delays``): loopback has no latency of its own,
and a kernel may lack ``netem``. In network namespaces, each peer's access link also gets its
rates (``tc tbf``). What a deployment cannot do (``rpc.*`` counters, misbehaving or hostile
peers, slowed compute, loss and jitter; partitions and rates on loopback) is skipped and said in the
report's notes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
import zlib
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..scenario.format import schema
from ..scenario.results.assertions import evaluate
from ..scenario.results.metrics import Recorder
from ..scenario.run.events import event_name
from ..scenario.run.runner import Progress, RunResult
from .peer_file import PeerFile, core_command
from .placement import Layout, plan_layout
from .processes import PeerDown, PeerProcess, Record, core_argv

logger = logging.getLogger(__name__)

UNMEASURED = ("rpc.messages", "rpc.bytes")
"""Counters a simulated network counts and real peers do not report."""
SKIPPED_ACTIONS = {
    "misbehave": "misbehaving experts are the simulator's fault injection",
    "hostile": "hostile behaviours are the simulator's fault injection",
    "slow_compute": "real devices run at their own speed",
    "forward": "scripted forwards run inside the simulator",
}
STOP_GRACE = 15.0
"""Seconds a peer has to stop after SIGTERM at the end before it is killed."""


class Network(Protocol):
    """Where deployed peers live: loopback, or network namespaces."""

    name: str

    def host(self, peer: str) -> str:
        """The address ``peer`` listens on and announces."""

    def add(self, peer: str, uplink_bps: float | None = None, downlink_bps: float | None = None) -> str:
        """Give ``peer`` its place and access rates (bits/s, None: uncapped); returns its address."""

    def command(self, peer: str, argv: list[str]) -> list[str]:
        """``argv`` run where ``peer`` lives."""

    def partition(self, sides: list[set[str]]) -> bool:
        """Cut each side off from the others; False if this network cannot."""

    def heal(self) -> None: ...

    def set_rates(self, peer: str, uplink_bps: float | None, downlink_bps: float | None) -> bool:
        """Change ``peer``'s access rates; False if this network cannot."""


class Loopback:
    """Every peer on 127.0.0.1, told apart by its port; no partitions, no rates."""

    name = "local"

    def host(self, peer: str) -> str:
        return "127.0.0.1"

    def add(self, peer: str, uplink_bps: float | None = None, downlink_bps: float | None = None) -> str:
        return self.host(peer)  # loopback has no rates: said in the report

    def command(self, peer: str, argv: list[str]) -> list[str]:
        return argv

    def partition(self, sides: list[set[str]]) -> bool:
        return False

    def heal(self) -> None:
        pass

    def set_rates(self, peer: str, uplink_bps: float | None, downlink_bps: float | None) -> bool:
        return False


@dataclass(frozen=True)
class DeployOptions:
    startup_timeout: float = 90.0
    """Seconds a peer process has to join (its interpreter and torch start first)."""
    emulate_delays: bool = True
    """Give each peer the topology's one-way delays to the others (see the module docstring)."""


@dataclass
class Deployed:
    """A finished deployment: the run's result and what the report should say about it."""

    result: RunResult
    notes: list[str] = field(default_factory=list)


def deploy_scenario(
    scenario: schema.Scenario,
    out: Path,
    *,
    network: Network | None = None,
    options: DeployOptions = DeployOptions(),
    notes: Sequence[str] = (),
    progress: Progress | None = None,
) -> Deployed:
    """Deploy ``scenario`` (already scaled, see ``scale.scale_scenario``) and measure it; peers'
    logs, identities and checkpoints go under ``out/peers``."""
    started = time.perf_counter()
    deployment = _Deployment(scenario, out, network or Loopback(), options, progress)
    deployment.notes += notes
    stopped = None
    try:
        asyncio.run(deployment.main())
    except _Stopped as error:
        stopped = str(error)
    recorder = deployment.recorder
    results = evaluate(scenario.assertions, recorder)
    result = RunResult(scenario, recorder, results, "", time.perf_counter() - started, stopped)
    return Deployed(result, deployment.notes)


class _Stopped(RuntimeError):
    """The deployment could not go on (its peers could not start)."""


class _Deployment:
    def __init__(
        self,
        scenario: schema.Scenario,
        out: Path,
        network: Network,
        options: DeployOptions,
        progress: Progress | None,
    ) -> None:
        self.scenario = scenario
        self.network = network
        self.options = options
        self.progress = progress
        self.folder = out / "peers"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.recorder = Recorder(scenario.sample_interval, duration=scenario.duration)
        self.recorder.count("peers.errors", 0.0, 0)
        self.recorder.count("peers.join_failures", 0.0, 0)
        training = scenario.workload.training
        if training is not None:
            for name in ("moe.bans", "moe.expert_failures", "moe.rejected"):
                self.recorder.count(name, 0.0, 0)
        self.layout: Layout = plan_layout(scenario, network)
        for name in self.layout.names:
            link = self.layout.placements[name].link
            network.add(name, _rate(link.uplink_bps), _rate(link.downlink_bps))
        self.notes: list[str] = [
            f"real processes on {'loopback' if network.name == 'local' else 'network namespaces'}; "
            "times are wall-clock seconds",
            f"not measured in a deployment: {', '.join(UNMEASURED)}",
        ]
        if options.emulate_delays:
            self.notes.append("the topology's one-way delays are held back in each peer's TCP transport")
        topology = scenario.topology
        lossy = topology.loss > 0 or any(p.link.loss > 0 for p in self.layout.placements.values())
        if lossy or topology.jitter > 0:
            self.notes.append(
                "the scenario's loss and jitter are not applied by a deployment (TCP on a clean link)"
            )
        if network.name == "local":
            self.notes.append("access links are not rate-limited on loopback")
        else:
            self.notes.append("access links' rates are tc tbf qdiscs on each peer's veth pair")
        self.peers = {name: self._peer(name) for name in self.layout.names}
        self.window_start = math.inf  # wall-clock time (time.time()) the measured window began
        self.rng = random.Random(f"{scenario.seed}/deploy")
        self._tasks: list[asyncio.Task[None]] = []
        self._frozen_by: dict[str, int] = {}

    def _peer(self, name: str) -> PeerProcess:
        placement = self.layout.placements[name]
        group = placement.group
        peer = PeerFile(
            role=group.role,
            experts=max(1, len(self.layout.hosted.get(name, []))),
            concurrent_batches=group.concurrent_batches,
            client_mode=placement.client_mode and group.role in ("dht", "trainer"),
            training=self.scenario.workload.training if group.role != "dht" else None,
            dht=self.scenario.dht,
        )
        base = core_command(peer)
        if name in self.layout.hosted:  # the simulator's own share of the grid for this peer
            at = base.index("--experts")
            base[at + 1 : at + 1 + peer.experts] = self.layout.hosted[name]
        folder = self.folder
        delays = folder / f"{name}.delays.json"
        if self.options.emulate_delays:
            delays.write_text(json.dumps(self.layout.delays_from(name), indent=1))
        flags = [
            "--host", self.network.host(name),
            "--port", str(self.layout.ports[name]),
            "--identity", str(folder / f"{name}.key"),
            "--no-subnet-limit",  # every peer shares one host or one /16
            "--operator",
        ]  # fmt: skip
        if self.options.emulate_delays:
            flags += ["--emulate-delays", str(delays)]
        if group.role != "dht":
            flags += ["--torch-threads", "1"]
        if group.trains:
            flags += ["--seed", str(zlib.crc32(f"{self.scenario.seed}/{name}/trainer".encode()) % 2**31)]
        if group.hosts_experts:
            flags += ["--checkpoint-dir", str(folder / f"{name}.experts")]

        def argv(initial_peers: Sequence[str]) -> list[str]:
            joining = ["--initial-peers", *initial_peers] if initial_peers else []
            return self.network.command(name, core_argv(*base, *flags, *joining))

        return PeerProcess(
            name, argv, log_path=folder / f"{name}.log", on_record=self._record, on_exit=self._exited
        )

    # ---- the run ---------------------------------------------------------------------------------

    async def main(self) -> None:
        began = time.time()
        try:
            await self._join_warmup()
            await asyncio.sleep(max(0.0, began + self.scenario.warmup - time.time()))
            self.window_start = time.time()
            await self._window()
        finally:
            await self._stop_all()

    async def _join_warmup(self) -> None:
        """Start the first peer, then the rest in waves that join through the ones up."""
        names = [n for n in self.layout.names if self.layout.placements[n].group.join_at is None]
        first, rest = names[0], names[1:]
        try:
            await self.peers[first].start([], timeout=self.options.startup_timeout)
        except PeerDown as error:
            raise _Stopped(f"the first peer could not start: {error}") from None
        wave = 8
        for at in range(0, len(rest), wave):
            await asyncio.gather(*(self._start(name) for name in rest[at : at + wave]))
            self._progress(-1.0)
        logger.info("%d of %d peers joined during the warmup", self._up(names), len(names))

    async def _start(self, name: str) -> None:
        peer = self.peers[name]
        try:
            await peer.start(self._initial_peers(exclude=name), timeout=self.options.startup_timeout)
        except PeerDown as error:
            logger.warning("%s", error)
            self.recorder.count("peers.join_failures", max(0.0, self._now()), 1)
            return
        if self.window_start <= time.time():
            self._alive_changed(name)
            if self.layout.placements[name].group.trains:
                peer.send({"op": "train"})

    def _initial_peers(self, exclude: str) -> list[str]:
        up = [
            p.endpoint for n, p in self.peers.items() if n != exclude and p.up and p.endpoint and not p.frozen
        ]
        return self.rng.sample(up, min(3, len(up)))

    async def _window(self) -> None:
        scenario = self.scenario
        for name, peer in self.peers.items():
            if peer.up and self.layout.placements[name].group.trains:
                peer.send({"op": "train"})
        self._sample(0.0)
        self._spawn(self._sampler())
        for group in scenario.peers:
            if group.join_at is not None:
                self._spawn(self._crowd(group))
            if group.churn is not None:
                self._start_churn(group)
        for index, event in enumerate(scenario.events):
            self._spawn(self._event(index, event))
        if scenario.workload.dht is not None:
            self._spawn(self._dht_workload(scenario.workload.dht))
        await asyncio.sleep(max(0.0, self.window_start + scenario.duration - time.time()))
        self._sample(scenario.duration)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coroutine))

    async def _stop_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.network.heal()
        # trainers first: a server that stops under a trainer's step would fail it after the end
        trainers = [p for n, p in self.peers.items() if self.layout.placements[n].group.trains]
        for stage in (trainers, [p for p in self.peers.values() if p not in trainers]):
            for peer in stage:
                peer.terminate()
            await asyncio.gather(*(peer.wait(STOP_GRACE) for peer in stage))

    def _now(self) -> float:
        """Measured-window time (negative during the warmup)."""
        return time.time() - self.window_start

    # ---- what peers report -----------------------------------------------------------------------

    def _record(self, name: str, record: Record) -> None:
        t = float(record.get("t", time.time())) - self.window_start
        if t > self.scenario.duration:
            return  # after the window: the run is over, as a simulated run's is
        recorder = self.recorder
        if "event" in record:
            event = str(record["event"])
            recorder.event(event, t, ok=bool(record.get("ok")), latency=float(record["latency"]))
            if event == "moe.step":
                group = self.layout.placements[name].group.group
                recorder.event(
                    f"moe.step.{group}", t, ok=bool(record.get("ok")), latency=float(record["latency"])
                )
        elif "value" in record:
            recorder.value(str(record["value"]), t, float(record["v"]))
        elif "count" in record:
            recorder.count(str(record["count"]), max(0.0, t), float(record["n"]))

    def _exited(self, name: str, code: int) -> None:
        """A process ended on its own: the peer's failure, recorded; the run goes on."""
        logger.warning("%s exited by itself with status %s (see %s)", name, code, self.peers[name].log_path)
        self.recorder.count("peers.errors", max(0.0, self._now()), 1)
        self.notes.append(f"{name} exited by itself with status {code} at {self._now():.1f} s (see its log)")
        self._alive_changed(name)

    # ---- sampling --------------------------------------------------------------------------------

    async def _sampler(self) -> None:
        interval = self.scenario.sample_interval
        for step in range(1, math.ceil(self.scenario.duration / interval - 1e-9)):
            await asyncio.sleep(max(0.0, self.window_start + step * interval - time.time()))
            self._sample(step * interval)

    def _sample(self, t: float) -> None:
        for name, peer in self.peers.items():
            if peer.up:
                self.recorder.mark_peer(name)
        self._gauge_alive(t, [group.group for group in self.scenario.peers])
        self._progress(t)

    def _alive_changed(self, name: str) -> None:
        t = self._now()
        if t < 0:
            return
        self.recorder.mark_peer(name)
        self._gauge_alive(t, [self.layout.placements[name].group.group])

    def _gauge_alive(self, t: float, groups: list[str]) -> None:
        """The swarm's and ``groups``' levels of live peers at ``t``."""
        self.recorder.gauge("peers.alive", t, self._up(self.peers))
        for group in groups:
            self.recorder.gauge(f"peers.alive.{group}", t, self._up(self.layout.groups[group]))

    def _up(self, names: Iterable[str]) -> int:
        return sum(self.peers[name].up for name in names)

    def _progress(self, t: float) -> None:
        if self.progress is not None:
            alive = {"peers.alive": float(self._up(self.peers))}
            live = self.recorder.live(10 * self.scenario.sample_interval) if t >= 0 else {}
            self.progress(t, self.scenario.duration, {**live, **alive})

    # ---- peers leaving and coming back -----------------------------------------------------------

    def _leave(self, name: str, graceful: bool) -> None:
        peer = self.peers[name]
        if not peer.up:
            return
        if graceful:
            peer.terminate()
        else:
            peer.kill()
        self._spawn(self._gone(name))

    async def _gone(self, name: str) -> None:
        await self.peers[name].wait(STOP_GRACE)
        self._alive_changed(name)

    async def _come_back(self, name: str) -> None:
        """Start ``name`` again, once a leave in progress has ended; nothing if it is up (churn
        or another event brought it back already) or starting."""
        peer = self.peers[name]
        if peer.leaving:
            await peer.wait(STOP_GRACE)
        if not peer.up and not peer.starting:
            await self._start(name)

    async def _crowd(self, group: schema.PeerGroup) -> None:
        assert group.join_at is not None
        await asyncio.sleep(max(0.0, self.window_start + group.join_at - time.time()))
        await asyncio.gather(*(self._start(name) for name in self.layout.groups[group.group]))

    def _start_churn(self, group: schema.PeerGroup) -> None:
        churn = group.churn
        assert churn is not None
        if churn.trace is not None:
            self.notes.append(f"group `{group.group}`: churn traces are not replayed by a deployment")
            return
        model = churn.model()
        names = self.layout.groups[group.group]

        async def lifecycle(name: str, rng: random.Random) -> None:
            end = self.window_start + self.scenario.duration
            session = model.first_session(rng)
            while True:
                await asyncio.sleep(session)
                if time.time() >= end:
                    return
                graceful = rng.random() < model.graceful_fraction  # drawn as the simulator draws
                if self._up(names) > churn.min_alive:
                    self._leave(name, graceful)
                await asyncio.sleep(model.downtime.sample(rng))
                if time.time() >= end:
                    return
                if churn.max_alive is None or self._up(names) < churn.max_alive:
                    await self._come_back(name)
                session = model.session.sample(rng)

        for name in names:
            self._spawn(lifecycle(name, random.Random(f"{self.scenario.seed}/churn/{name}")))

    # ---- scheduled events ------------------------------------------------------------------------

    async def _event(self, index: int, event: schema.Event) -> None:
        await asyncio.sleep(max(0.0, self.window_start + event.at - time.time()))
        name = event_name(index, event)
        undo = self._apply(index, event)
        if undo is False:
            return  # skipped: said in the notes
        duration = event.duration
        ends = None if duration is None else min(event.at + duration, self.scenario.duration)
        self.recorder.window(name, event.action, event.at, ends if undo is not None else event.at)
        if undo is None or duration is None:
            return
        await asyncio.sleep(duration)
        result = undo()
        if asyncio.iscoroutine(result):
            await result

    def _apply(self, index: int, event: schema.Event) -> Callable[[], Any] | bool | None:
        """Apply ``event`` now; returns its undo, None when there is nothing to undo, or False
        when a deployment cannot apply it."""
        action = event.action
        label = f"event {event_name(index, event)!r} ({action})"
        if action in SKIPPED_ACTIONS:
            self.notes.append(f"{label} skipped: {SKIPPED_ACTIONS[action]}")
            return False
        if isinstance(event, schema.PartitionEvent):
            sides: list[set[str]] = []
            for side in event.sides:
                sides.append(set(self._select(index, side, alive=False)).difference(*sides))
            rest = set(self.peers).difference(*sides)
            if not self.network.partition([side for side in (*sides, rest) if side]):
                self.notes.append(f"{label} skipped: loopback cannot be partitioned (use --netns)")
                return False
            return self.network.heal
        if isinstance(event, schema.HealEvent):
            self.network.heal()
            return None
        chosen = self._select(index, event.select, alive=not isinstance(event, schema.DegradeEvent))
        if isinstance(event, schema.StoreEvent | schema.GetEvent | schema.LookupEvent):
            self._scripted(event, chosen)
            return None
        if isinstance(event, schema.CrashEvent | schema.LeaveEvent):
            for name in chosen:
                self._leave(name, isinstance(event, schema.LeaveEvent))
            return lambda: asyncio.gather(*(self._come_back(name) for name in chosen))
        if isinstance(event, schema.RestartEvent):
            for name in chosen:
                self._leave(name, False)
                self._spawn(self._come_back(name))
            return None
        if isinstance(event, schema.FreezeEvent):
            for name in chosen:
                self._frozen_by[name] = self._frozen_by.get(name, 0) + 1
                self.peers[name].freeze()
            return lambda: [self._thaw(name) for name in chosen]
        if isinstance(event, schema.DegradeEvent):
            return self._degrade(label, chosen, event)
        raise AssertionError(f"unhandled event {action}")

    def _thaw(self, name: str) -> None:
        self._frozen_by[name] -= 1
        if not self._frozen_by[name]:
            self.peers[name].thaw()

    def _degrade(self, label: str, names: list[str], event: schema.DegradeEvent) -> Callable[[], Any] | bool:
        if event.bandwidth is None or event.latency or event.loss:
            self.notes.append(
                f"{label}: only a bandwidth cap is applied by a deployment (not latency or loss)"
            )
        if event.bandwidth is None:
            return False
        links = {name: self.layout.placements[name].link for name in names}
        for name in names:
            link = links[name]
            cap = event.bandwidth
            if not self.network.set_rates(name, min(link.uplink_bps, cap), min(link.downlink_bps, cap)):
                self.notes.append(f"{label} skipped: loopback has no rates to cap (use --netns)")
                return False

        def undo() -> None:
            for name, link in links.items():
                self.network.set_rates(name, _rate(link.uplink_bps), _rate(link.downlink_bps))

        return undo

    def _select(self, index: int, selector: schema.Selector, *, alive: bool) -> list[str]:
        names = [n for n, p in self.peers.items() if p.up] if alive else list(self.peers)
        placed = [(n, self.layout.placements[n].group, str(self.layout.placements[n].region)) for n in names]
        names = [name for name, _, _ in selector.matching(placed)]
        rng = random.Random(f"{self.scenario.seed}/event/{index}")
        if selector.fraction is not None:
            names = sorted(rng.sample(names, round(selector.fraction * len(names))))
        elif selector.count is not None:
            names = sorted(rng.sample(names, min(selector.count, len(names))))
        return names

    def _scripted(self, event: schema.Event, chosen: list[str]) -> None:
        metric = {"store": "dht.store", "get": "dht.get", "lookup": "dht.lookup"}[event.action]
        for name in chosen:
            if isinstance(event, schema.StoreEvent):
                command = {"op": "store", "key": event.key, "size": int(event.value_size), "ttl": event.ttl}
            elif isinstance(event, schema.GetEvent):
                command = {"op": "get", "key": event.key}
            else:
                command = {"op": "lookup", "target": f"{self.rng.getrandbits(160):040x}"}
            self._spawn(self._operation(name, metric, command))

    # ---- the DHT workload ------------------------------------------------------------------------

    async def _dht_workload(self, spec: schema.DHTWorkload) -> None:
        """Poisson stores, gets and lookups, as the simulated run draws them (see runner.py)."""
        rng = random.Random(f"{self.scenario.seed}/workload/dht")
        roles = {"dht", "peer"}
        requesters = [n for n in self.peers if self.layout.placements[n].group.role in roles] or list(
            self.peers
        )
        rate = spec.stores_per_second + spec.gets_per_second + spec.lookups_per_second
        if rate <= 0:
            return
        acknowledged: list[int] = []
        known: set[int] = set()
        popular = spec.popularity.sampler(spec.keys)
        ttl = spec.ttl
        while True:
            await asyncio.sleep(rng.expovariate(rate))
            live = [n for n in requesters if self.peers[n].up and not self.peers[n].frozen]
            if not live:
                continue
            name = rng.choice(live)
            kind = rng.random() * rate
            if kind < spec.stores_per_second:
                key = popular(rng)
                command = {"op": "store", "key": f"key{key}", "size": int(spec.value_size), "ttl": ttl}
                self._spawn(self._operation(name, "dht.store", command, key, acknowledged, known))
            elif kind < spec.stores_per_second + spec.gets_per_second:
                if acknowledged:
                    key = acknowledged[popular(rng) % len(acknowledged)]
                    self._spawn(self._operation(name, "dht.get", {"op": "get", "key": f"key{key}"}))
            else:
                target = rng.getrandbits(160)
                self._spawn(self._operation(name, "dht.lookup", {"op": "lookup", "target": f"{target:040x}"}))

    async def _operation(
        self,
        name: str,
        metric: str,
        command: Record,
        key: int | None = None,
        acknowledged: list[int] | None = None,
        known: set[int] | None = None,
    ) -> None:
        began = time.time()
        try:
            reply = await self.peers[name].ask(command)
        except PeerDown:  # the requester went down mid-operation: a failed operation
            self.recorder.event(metric, self._now(), ok=False, latency=time.time() - began)
            return
        t = float(reply["t"]) - self.window_start
        if t > self.scenario.duration:
            return
        ok, latency = bool(reply.get("ok")), float(reply["latency"])
        if metric != "dht.lookup":
            self.recorder.event(metric, t, ok=ok, latency=latency)
        else:
            self.recorder.event(metric, t, ok=ok, latency=latency, **self._judge(name, command, reply))
        if ok and key is not None and acknowledged is not None and known is not None and key not in known:
            known.add(key)
            acknowledged.append(key)

    def _judge(self, name: str, command: Record, reply: Record) -> dict[str, float]:
        """A lookup's hops, and how it compares with the live peers truly nearest its target."""
        target = int(command["target"], 16)
        found = [int(node, 16) for node in reply.get("nearest", [])]
        if "rounds" not in reply:
            return {}
        requester = self.peers[name].node_id
        live = [
            p.node_id
            for p in self.peers.values()
            if p.up and p.node_id is not None and p.node_id != requester
        ]
        truth = sorted(live, key=lambda node: node ^ target)[: self.scenario.dht.config().k]
        return {
            "hops": float(reply["rounds"]),
            "top1": float(bool(found) and bool(truth) and found[0] == truth[0]),
            "overlap": len(set(found) & set(truth)) / max(1, len(truth)),
        }


def _rate(bps: float) -> float | None:
    return None if math.isinf(bps) else bps
