"""The scenario format (schema_version 1) as typed, immutable pydantic models.

One ``Scenario`` describes an experiment: the world (``topology``), who is in it (``peers``),
what goes wrong when (``events``), what the peers do (``workload``) and what must hold
(``assertions``). Field checks live on each model; checks that span models (a selector naming
a group, ``during`` naming an event) run once on ``Scenario`` and report every problem at once,
each at its own key path, through ``ScenarioProblems``. docs/scenarios.md documents every
field from these models' docstrings.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from ...swarms.behaviours import FLOODS as FLOOD_BEHAVIOURS
from ...swarms.behaviours import HOSTILE_BEHAVIOURS
from .distributions import (
    ChurnTime,
    Constant,
    FrozenModel,
    ParetoTime,
    Popularity,
    UniformPopularity,
    Varying,
)
from .names import (
    COUNTER_STATS,
    COUNTERS,
    EVENT_FIELDS,
    EVENT_STATS,
    EVENTS,
    GAUGE_STATS,
    VALUE_STATS,
    describe_metric,
    metric_unit,
)
from .units import (
    Bandwidth,
    Compute,
    Duration,
    Fraction,
    Latency,
    PositiveDuration,
    Size,
    bare_slip,
    format_duration,
    format_fraction,
    parse_bandwidth,
    parse_duration,
    parse_fraction,
    parse_latency,
    parse_size,
)

if TYPE_CHECKING:
    from hivemind_core.dht import DHTConfig

    from ...swarms.churn import ChurnModel

Loc = tuple[str | int, ...]


class ScenarioProblems(ValueError):
    """Several problems found by one cross-check, each with its key path from the model it checked."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {message}" for loc, message in problems))
        self.problems = problems


def _check_name(kind: str) -> AfterValidator:
    def check(name: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name):
            raise ValueError(f"a {kind} is a letter then letters, digits, `_`, `.` or `-`, got `{name}`")
        return name

    return AfterValidator(check)


def suggest(word: object, choices: Iterable[str]) -> str:
    """` (did you mean `x`?)` for the choice closest to a misspelt word, or nothing."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _existing_file(path: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the scenario file (the loader passes ``base_dir``)."""
    base = (info.context or {}).get("base_dir")
    resolved = (Path(base) / path if base is not None else path).expanduser()
    if not resolved.is_file():
        raise ValueError(f"file not found: {resolved}")
    return resolved.resolve() if base is not None else resolved


# ---- the world ---------------------------------------------------------------------------------

TOPOLOGY_PARAMS: dict[str, dict[str, Any]] = {
    "waxman": {"alpha": float, "beta": float, "max_latency": parse_latency},
    "barabasi_albert": {"m": int, "min_latency": parse_latency, "max_latency": parse_latency},
    "random_geometric": {"radius": float, "max_latency": parse_latency},
    "world_regions": {},
    "file": {"latency_attribute": str, "latency_unit": parse_duration},
}
"""Generator parameters allowed per topology kind, with their parsers (latencies take units)."""


class TcpEffects(FrozenModel):
    """TCP's effects on messages between peers; each off by default (the plain model)."""

    handshake: bool = False
    """The first message between two peers, and the first after their connection idled 60 s,
    was closed to make room among a peer's 256 connections (least recently used first), or was
    reset by a crash or close, waits one round trip (the connection's handshake)."""
    retransmit: bool = False
    """A lost message arrives late instead of never: it is sent again after a retransmission
    timeout (max(200 ms, 2 round trips), doubling on each further loss; dropped after 6);
    messages between two peers keep their order, so later ones wait for it."""


class Topology(FrozenModel):
    """The backbone: regions or routers joined by links with latency, jitter, loss and bandwidth."""

    kind: Literal["world_regions", "waxman", "barabasi_albert", "random_geometric", "file"] = "world_regions"
    """`world_regions`: eight cloud regions with real inter-region round-trip times; `waxman`,
    `barabasi_albert`, `random_geometric`: generated graphs of `nodes` routers; `file`: a GraphML or
    GML file."""
    nodes: int | None = Field(default=None, ge=1)
    """Routers in a generated graph (required for generated kinds, not allowed otherwise)."""
    params: dict[str, float | int | str] = {}
    """Generator parameters: waxman `alpha`, `beta`, `max_latency`; barabasi_albert `m`,
    `min_latency`, `max_latency`; random_geometric `radius`, `max_latency`; file `latency_attribute`
    (edge attribute, default `latency`) and `latency_unit` (what one unit of it is, default `1s`)."""
    path: Path | None = None
    """The graph file (kind `file`), relative to the scenario file."""
    jitter: Fraction = 0.0
    """Random extra delay per message, as a fraction of its path's latency."""
    loss: Fraction = 0.0
    """Probability that a message is lost, on every path."""
    backbone_bandwidth: Bandwidth | None = None
    """Capacity of each backbone edge, shared by the traffic crossing it; null: unlimited."""
    tcp: TcpEffects = TcpEffects()
    """What TCP adds to messages, for runs closer to a real deployment (off: datagrams)."""

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _existing_file(path, info)

    @model_validator(mode="after")
    def _per_kind(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        generated = self.kind in ("waxman", "barabasi_albert", "random_geometric")
        if generated and self.nodes is None:
            problems.append((("nodes",), f"a {self.kind} topology needs `nodes`"))
        if not generated and self.nodes is not None:
            problems.append((("nodes",), f"`nodes` is only for generated topologies, not {self.kind}"))
        if (self.kind == "file") != (self.path is not None):
            message = (
                "a file topology needs `path`" if self.kind == "file" else "`path` is only for kind file"
            )
            problems.append((("path",), message))
        allowed = TOPOLOGY_PARAMS[self.kind]
        for key, value in self.params.items():
            if key not in allowed:
                known = f"; known: {', '.join(allowed)}" if allowed else ""
                problems.append(
                    (
                        ("params", key),
                        f"unknown parameter `{key}` for {self.kind}{suggest(key, allowed)}{known}",
                    )
                )
                continue
            try:
                allowed[key](value)
            except (TypeError, ValueError) as error:
                problems.append((("params", key), str(error)))
        if problems:
            raise ScenarioProblems(problems)
        return self

    def known_nodes(self) -> list[str | int] | None:
        """The backbone's node names in the order peers are placed on them (round-robin), when
        known without reading a file."""
        if self.kind == "world_regions":
            from hivemind_sim import Topology as World  # lazy: networkx loads only when needed

            return World.world_regions().nodes
        if self.nodes is not None:
            return list(range(self.nodes))
        return None

    def param(self, key: str, default: Any = None) -> Any:
        """A generator parameter in its base unit (latencies in seconds), or ``default``."""
        return TOPOLOGY_PARAMS[self.kind][key](self.params[key]) if key in self.params else default


# ---- peers ---------------------------------------------------------------------------------------


class Link(FrozenModel):
    """A peer's access link to its backbone node; each value may be a distribution drawn per peer."""

    uplink: Varying[Bandwidth] | None = None
    """Upload bandwidth; null: unlimited."""
    downlink: Varying[Bandwidth] | None = None
    """Download bandwidth; null: unlimited."""
    latency: Varying[Latency] = Constant[Latency](value=0.005)
    """One-way latency between the peer and its backbone node (last mile)."""
    loss: Fraction = 0.0
    """Probability that a message through this link is lost."""


class Hardware(FrozenModel):
    """How fast a peer computes; each value may be a distribution drawn per peer."""

    device: Varying[Compute] = Constant[Compute](value=10e12)
    """Speed of the device that runs hosted experts' forward and backward passes."""
    trainer_device: Varying[Compute] | None = None
    """Speed of a trainer's own local layers (its forward and backward take virtual time);
    default: the same as `device` (filled in on loading, so never null after it)."""

    @model_validator(mode="after")
    def _trainer_device_defaults_to_device(self) -> Self:
        if self.trainer_device is None:
            self.__dict__["trainer_device"] = self.device  # frozen: set once, while being built
        return self


class Churn(FrozenModel):
    """Peers of a group leaving and coming back: drawn session and downtime lengths, or a trace."""

    session: ChurnTime | None = None
    """How long a peer stays up each time it joins."""
    downtime: ChurnTime | None = None
    """How long a peer stays away before it comes back (same identity)."""
    graceful: Fraction = 0.0
    """Fraction of leaves that are graceful (records handed on, connections closed); the rest crash."""
    trace: Path | None = None
    """Instead of session/downtime: a CSV file with header `peer,join,leave` (peer name, seconds
    from the start of the measured window), relative to the scenario file."""
    min_alive: int = Field(default=0, ge=0)
    """Churn never takes the group's live peers below this many (a leave is skipped)."""
    max_alive: int | None = Field(default=None, ge=1)
    """Churn never brings the group's live peers above this many (a return waits); null: no bound."""
    start: Literal["stationary", "lockstep"] | None = None
    """How drawn sessions begin: `stationary` (the default with `session`, filled in on loading):
    each peer's first session is what remains of a session in progress at a random moment, so
    peers leave at the steady rate from the start; `lockstep`: every peer starts a fresh session
    when the measured window opens (with heavy tails, a burst of early leaves). Not for a trace."""

    @field_validator("trace")
    @classmethod
    def _trace_exists(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _existing_file(path, info)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        drawn = self.session is not None or self.downtime is not None
        if drawn and self.trace is not None:
            raise ScenarioProblems(
                [(("trace",), "give either `session` and `downtime`, or `trace`, not both")]
            )
        if not drawn and self.trace is None:
            raise ScenarioProblems([((), "churn needs `session` and `downtime`, or a `trace` file")])
        if drawn and (self.session is None or self.downtime is None):
            missing = "downtime" if self.downtime is None else "session"
            raise ScenarioProblems(
                [((missing,), f"churn with `session` and `downtime` needs both: `{missing}`")]
            )
        if self.max_alive is not None and self.max_alive < self.min_alive:
            raise ScenarioProblems(
                [(("max_alive",), f"max_alive {self.max_alive} < min_alive {self.min_alive}")]
            )
        if self.trace is not None and self.start is not None:
            raise ScenarioProblems([(("start",), "`start` is for drawn sessions: a trace gives every time")])
        if self.trace is None and self.start is None:
            self.__dict__["start"] = "stationary"  # frozen: set once, while being built
        session = self.session
        if self.start == "stationary" and isinstance(session, ParetoTime) and session.shape <= 1:
            message = (
                f"a Pareto session of shape {session.shape:g} (<= 1) has an infinite mean, so churn has no"
                " steady state to start in: use a shape > 1, or `start: lockstep`"
            )
            raise ScenarioProblems([(("session", "shape"), message)])
        return self

    def model(self) -> ChurnModel:
        """The churn of drawn sessions, to pass to ``swarms.churn.start_churn`` (not for a trace)."""
        from ...swarms.churn import ChurnModel  # lazy: the format is read without loading the simulator

        assert self.session is not None and self.downtime is not None and self.start is not None
        return ChurnModel(self.session.to_churn(), self.downtime.to_churn(), self.graceful, self.start)


Role = Literal["dht", "server", "trainer", "peer"]
EXPERT_ROLES = frozenset({"server", "peer"})
TRAINER_ROLES = frozenset({"trainer", "peer"})


class PeerGroup(FrozenModel):
    """`count` peers made from one template, named `<group>-<index>` (index from 0)."""

    group: Annotated[str, _check_name("group name")]
    """Unique group name."""
    role: Role
    """`dht`: a plain DHT peer; `server`: hosts experts; `trainer`: trains through a DMoE layer;
    `peer`: hosts experts and trains."""
    count: int = Field(ge=1)
    """How many peers."""
    regions: tuple[str | int, ...] | None = Field(default=None, min_length=1)
    """Topology nodes to place the peers on, round-robin (world regions by name, generated graphs'
    routers by number from 0); null: all nodes."""
    join_at: Duration | None = None
    """When the group's peers join, all at once, from the start of the measured window (a flash
    crowd); null: during the warmup."""
    client_mode: Fraction = 0.0
    """Fraction of the peers behind NAT: they accept no incoming connections."""
    link: Link = Link()
    """Access link."""
    hardware: Hardware = Hardware()
    """Compute speed."""
    experts: int = Field(default=1, ge=1)
    """Grid experts hosted per peer (roles server and peer)."""
    concurrent_batches: int = Field(default=1, ge=1)
    """Training batches each trainer keeps in flight (roles trainer and peer)."""
    churn: Churn | None = None
    """Peers leaving and coming back; null: they stay."""

    @property
    def hosts_experts(self) -> bool:
        return self.role in EXPERT_ROLES

    @property
    def trains(self) -> bool:
        return self.role in TRAINER_ROLES

    def peer_names(self) -> list[str]:
        return [f"{self.group}-{index}" for index in range(self.count)]

    def placed_on(self, nodes: Sequence[str]) -> list[str]:
        """Each peer's topology node (as text), in peer order: round-robin on `regions`, default
        all ``nodes`` (the runner places them so, and the checks reason about where they are)."""
        regions = [str(region) for region in self.regions] if self.regions else list(nodes)
        return [regions[index % len(regions)] for index in range(self.count)]

    @model_validator(mode="after")
    def _role_fields(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        if self.experts != 1 and not self.hosts_experts:
            problems.append((("experts",), f"`experts` is for roles server and peer, not {self.role}"))
        if self.concurrent_batches != 1 and not self.trains:
            problems.append(
                (
                    ("concurrent_batches",),
                    f"`concurrent_batches` is for roles trainer and peer, not {self.role}",
                )
            )
        if self.churn is not None and self.churn.min_alive > self.count:
            problems.append(
                (("churn", "min_alive"), f"min_alive {self.churn.min_alive} > count {self.count}")
            )
        if problems:
            raise ScenarioProblems(problems)
        return self


# ---- events ----------------------------------------------------------------------------------------


Candidate = tuple[str, "PeerGroup", str]
"""A peer a selector may pick: its name, its group and its topology node (as text)."""


class Selector(FrozenModel):
    """Which peers an event acts on; the keys given intersect (`{group: servers, region: eu-west}`)."""

    group: str | None = None
    """Peers of this group."""
    role: Role | None = None
    """Peers of groups with this role."""
    region: str | int | None = None
    """Peers placed on this topology node (a world region's name, a generated router's number)."""
    regions: tuple[str | int, ...] | None = Field(default=None, min_length=1)
    """Peers placed on any of these topology nodes (`[us-east, us-west, sa-east]`: the Americas)."""
    peers: tuple[str, ...] | None = None
    """These peers, by name (`servers-3`)."""
    fraction: Fraction | None = None
    """A random fraction of the peers matched so far (rounded to nearest, drawn from the seed)."""
    count: int | None = Field(default=None, ge=1)
    """Instead of `fraction`: this many random peers of those matched."""

    def narrow(self, peers: list[Candidate]) -> Iterator[tuple[str, list[Candidate]]]:
        """For each key given (group, role, region, regions, peers, in that order), the key and
        the peers it keeps of those the keys before it kept."""
        tests: list[tuple[str, Callable[[Candidate], bool]]] = []
        if self.group is not None:
            tests.append(("group", lambda peer: peer[1].group == self.group))
        if self.role is not None:
            tests.append(("role", lambda peer: peer[1].role == self.role))
        if self.region is not None:
            tests.append(("region", lambda peer: peer[2] == str(self.region)))
        if self.regions is not None:
            wanted = {str(region) for region in self.regions}
            tests.append(("regions", lambda peer: peer[2] in wanted))
        if self.peers is not None:
            named = set(self.peers)
            tests.append(("peers", lambda peer: peer[0] in named))
        for key, test in tests:
            peers = [peer for peer in peers if test(peer)]
            yield key, peers

    def matching(self, peers: list[Candidate]) -> list[Candidate]:
        """The peers that every key given keeps (``fraction`` and ``count`` then draw from them)."""
        for _, kept in self.narrow(peers):
            peers = kept
        return peers

    @model_validator(mode="after")
    def _some_and_not_both(self) -> Self:
        if self.fraction is not None and self.count is not None:
            raise ScenarioProblems([(("count",), "give `fraction` or `count`, not both")])
        if all(value is None for value in self.__dict__.values()):
            raise ValueError("select needs at least one of group, role, region(s), peers, fraction, count")
        return self


class _Event(FrozenModel):
    """A timeline entry: what happens (`action`), when, for how long, and to which peers."""

    name: Annotated[str, _check_name("event name")] | None = None
    """Name used by assertions (`... during <name>`); unique."""
    at: Duration
    """When it happens, from the start of the measured window."""
    duration: PositiveDuration | None = None
    """How long before it is undone (crashed peers restart, frozen ones resume...); null: until
    the end of the run. Every fault is undone at the end."""


class _SelectingEvent(_Event):
    """A timeline entry: what happens (`action`), when, for how long, and to which peers."""

    select: Selector
    """The peers it acts on."""


class CrashEvent(_SelectingEvent):
    """The selected peers' machines die: no goodbye; undone: they restart with the same identity."""

    action: Literal["crash"]
    """Selects this action."""


class LeaveEvent(_SelectingEvent):
    """The selected peers leave gracefully (hand their records on); undone: they rejoin."""

    action: Literal["leave"]
    """Selects this action."""


class FreezeEvent(_SelectingEvent):
    """The selected peers stop answering but keep their connections (like SIGSTOP); undone: they resume."""

    action: Literal["freeze"]
    """Selects this action."""


class RestartEvent(_SelectingEvent):
    """The selected peers crash and restart at once with the same identity (state is lost)."""

    action: Literal["restart"]
    """Selects this action."""


class PartitionEvent(_Event):
    """The network splits: peers in different sides cannot reach each other; undone: healed."""

    action: Literal["partition"]
    """Selects this action."""
    sides: tuple[Selector, ...] = Field(min_length=1)
    """Each side's peers; the peers in no side form one more side. A peer that several sides
    select stays on the first of them."""

    @model_validator(mode="after")
    def _distinct_sides(self) -> Self:
        for later, side in enumerate(self.sides):
            if side in self.sides[:later]:
                first = self.sides.index(side)
                raise ScenarioProblems(
                    [(("sides", later), f"the same selector as side {first}: both would pick the same peers")]
                )
        return self


class HealEvent(_Event):
    """Ends every active partition."""

    action: Literal["heal"]
    """Selects this action."""


class DegradeEvent(_SelectingEvent):
    """The selected peers' access links get worse; undone: restored."""

    action: Literal["degrade"]
    """Selects this action."""
    latency: Latency = 0.0
    """Added one-way latency."""
    loss: Fraction = 0.0
    """Added loss probability."""
    bandwidth: Bandwidth | None = None
    """Cap on both directions; null: unchanged."""

    @model_validator(mode="after")
    def _does_something(self) -> Self:
        if self.latency == 0 and self.loss == 0 and self.bandwidth is None:
            raise ValueError("degrade needs at least one of `latency`, `loss`, `bandwidth`")
        return self


class SlowComputeEvent(_SelectingEvent):
    """The selected peers' devices get `factor` times slower; undone: normal speed."""

    action: Literal["slow_compute"]
    """Selects this action."""
    factor: float = Field(ge=1)
    """Slowdown: every compute duration is multiplied by it."""


class MisbehaveEvent(_SelectingEvent):
    """The selected peers' experts return bad or late outputs; undone: correct again."""

    action: Literal["misbehave"]
    """Selects this action."""
    output: Literal["nan", "garbage", "slow", "plausible"]
    """`nan`: outputs full of NaN; `garbage`: well-formed tensors of random numbers a million
    times too large; `slow`: correct answers, `delay` late; `plausible`: random answers with
    the norms of the true ones (finite and of the right scale: the hardest junk to tell)."""
    delay: PositiveDuration | None = None
    """For `slow`: how much later every answer comes (default `5s`, filled in on loading)."""

    @model_validator(mode="after")
    def _delay_for_slow(self) -> Self:
        if self.delay is not None and self.output != "slow":
            raise ScenarioProblems([(("delay",), f"`delay` is for output `slow`, not `{self.output}`")])
        if self.output == "slow" and self.delay is None:
            self.__dict__["delay"] = DEFAULT_SLOW_DELAY  # frozen: set once, while being built
        return self


DEFAULT_SLOW_DELAY = 5.0
"""How late a `slow` misbehaving expert answers when the event gives no `delay`."""

HostileBehaviour = Literal[HOSTILE_BEHAVIOURS]  # type: ignore[valid-type]  # the names, from one place
FLOODS = FLOOD_BEHAVIOURS
"""Behaviours that send requests at a `rate`."""
DEFAULT_FLOOD_RATE = 100.0
"""Requests per second of a flood whose event gives no `rate`."""


def parse_rate(value: object) -> float:
    """Events per second from `200/s`, `20/min` or a number."""
    per = {"/s": 1.0, "/min": 1 / 60, "/h": 1 / 3600}
    text = str(value).strip()
    unit = next((u for u in per if text.endswith(u)), "")
    try:
        number = float(value if not unit and not isinstance(value, str) else text.removesuffix(unit))
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        raise ValueError(f"expected a positive rate like `200/s`, `20/min` or `200`, got `{value}`")
    return number * per.get(unit, 1.0)


Rate = Annotated[float, BeforeValidator(parse_rate)]


class HostileEvent(_SelectingEvent):
    """The selected peers turn hostile, each as `behaviour` says; undone: they play fair again.

    A hostile peer stays a working DHT node (it answers, stores, looks up) and lies or floods
    on top: well-behaved peers must refuse the lies and keep serving each other."""

    action: Literal["hostile"]
    """Selects this action."""
    behaviour: HostileBehaviour
    """`foreign_endpoint`: announces another live peer's endpoint (or a made-up one) as its own,
    in its DHT requests and its expert declarations; `unparsable_endpoint`: announces endpoints
    that do not parse; `junk_contacts`: answers every find with contacts that are junk (bad
    endpoints, random ids); `phantom_contacts`: answers finds with well-formed contacts nobody
    listens at; `phantom_values`: answers finds of any key with a made-up value; `store_flood`:
    floods its neighbours with stores; `never_read`: sends requests to its neighbours and never
    reads the replies."""
    rate: Rate | None = None
    """For `store_flood` and `never_read`: requests per second, like `200/s` (default `100/s`,
    filled in on loading)."""

    @model_validator(mode="after")
    def _rate_for_floods(self) -> Self:
        if self.rate is not None and self.behaviour not in FLOODS:
            floods = " and ".join(f"`{name}`" for name in sorted(FLOODS))
            raise ScenarioProblems(
                [(("rate",), f"`rate` is for behaviours {floods}, not `{self.behaviour}`")]
            )
        if self.behaviour in FLOODS and self.rate is None:
            self.__dict__["rate"] = DEFAULT_FLOOD_RATE  # frozen: set once, while being built
        return self


class _Operation(_SelectingEvent):
    """A scripted operation: each selected live peer does it once, at `at` (it takes no `duration`)."""


class StoreEvent(_Operation):
    """Each selected peer stores `key` (a value of `value_size` bytes), as the DHT workload does."""

    action: Literal["store"]
    """Selects this action."""
    key: str
    """The key stored."""
    ttl: PositiveDuration = 300.0
    """Lifetime of the stored value."""
    value_size: Size = 16
    """Size of the value."""


class GetEvent(_Operation):
    """Each selected peer reads `key`, as the DHT workload does."""

    action: Literal["get"]
    """Selects this action."""
    key: str
    """The key read."""


class LookupEvent(_Operation):
    """Each selected peer looks up `target`, judged against the live-peer oracle like the
    workload's lookups."""

    action: Literal["lookup"]
    """Selects this action."""
    target: int | None = Field(default=None, ge=0, lt=1 << 160)
    """The 160-bit id looked up; null: drawn from the seed."""


class ForwardEvent(_Operation):
    """Each selected trainer runs one DMoE forward and backward on a batch of the dataset (no
    optimizer step), recorded as `moe.forward`."""

    action: Literal["forward"]
    """Selects this action."""


OPERATIONS: tuple[type[_Operation], ...] = (StoreEvent, GetEvent, LookupEvent, ForwardEvent)
"""Events that act once and are over (their outcomes are kept per peer)."""


Event = Annotated[
    CrashEvent
    | LeaveEvent
    | FreezeEvent
    | RestartEvent
    | PartitionEvent
    | HealEvent
    | DegradeEvent
    | SlowComputeEvent
    | MisbehaveEvent
    | HostileEvent
    | StoreEvent
    | GetEvent
    | LookupEvent
    | ForwardEvent,
    Field(discriminator="action"),
]
"""One timeline entry, told apart by `action`."""
EVENT_TYPES: tuple[type[FrozenModel], ...] = get_args(get_args(Event)[0])
"""The models of `Event`, in its order."""


# ---- workload ------------------------------------------------------------------------------------


class DHTWorkload(FrozenModel):
    """DHT stores, gets and lookups, issued by live peers with role dht or peer (all peers if
    there are none)."""

    stores_per_second: float = Field(default=1.0, ge=0)
    """Stores per second over the whole network (Poisson arrivals)."""
    gets_per_second: float = Field(default=10.0, ge=0)
    """Gets per second over the whole network (Poisson arrivals)."""
    lookups_per_second: float = Field(default=1.0, ge=0)
    """Lookups of random ids per second, judged against the live-peer oracle: their hops,
    whether the nearest node found is the nearest live one (`top1`) and the share of the `k`
    nearest live nodes found (`overlap`)."""
    keys: int = Field(default=1000, ge=1)
    """Number of distinct keys."""
    popularity: Popularity = UniformPopularity(distribution="uniform")
    """How requests spread over keys: `{distribution: uniform}` or `{distribution: zipf, exponent: 1.1}`."""
    ttl: PositiveDuration = 3600.0
    """Lifetime of a stored value."""
    value_size: Size = 64
    """Size of each stored value."""


class ModelShape(FrozenModel):
    """The trained network: local layer, mixture of experts, local head."""

    hidden_dim: int = Field(default=32, ge=1)
    """Width of the expert's input and output."""
    expert: Literal["ffn", "transformer"] = "ffn"
    """Expert architecture."""


class Optimizer(FrozenModel):
    """The trainers' optimizer."""

    name: Literal["adam", "sgd"] = "adam"
    """Algorithm."""
    lr: float = Field(default=1e-3, gt=0)
    """Learning rate."""


class TrainingWorkload(FrozenModel):
    """Trainers (roles trainer and peer) train through a DMoE layer on experts hosted by servers and peers."""

    model: ModelShape = ModelShape()
    """The trained network."""
    grid: tuple[int, ...] = Field(default=(8, 8), min_length=1)
    """Expert grid dimensions; experts are named `<expert>.<i>.<j>...`."""
    k_best: int = Field(default=4, ge=1)
    """Experts each sample is sent to."""
    k_min: int = Field(default=1, ge=1)
    """Answers a step needs before it stops waiting for slower experts."""
    forward_timeout: PositiveDuration = 3.0
    """Longest wait for an expert's forward answer."""
    backward_timeout: PositiveDuration = 3.0
    """Longest wait for an expert's backward answer."""
    batch_size: int = Field(default=16, ge=1)
    """Samples per training batch."""
    optimizer: Optimizer = Optimizer()
    """Optimizer."""
    dataset: Literal["synthetic", "digits"] = "synthetic"
    """`synthetic`: random inputs labelled by a fixed projection; `digits`: scikit-learn's 8x8 digits."""
    batches_in_flight: Literal[0] | None = None
    """`0`: trainers do not train on their own, only in scripted `forward` events; null: each
    trainer keeps its group's `concurrent_batches` in flight."""

    @property
    def experts_in_grid(self) -> int:
        return math.prod(self.grid)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        if min(self.grid) < 1:
            problems.append((("grid",), f"grid dimensions must be >= 1, got {list(self.grid)}"))
        if self.k_min > self.k_best:
            problems.append((("k_min",), f"k_min {self.k_min} > k_best {self.k_best}"))
        if self.k_best > self.experts_in_grid:
            problems.append(
                (("k_best",), f"k_best {self.k_best} > {self.experts_in_grid} experts in the grid")
            )
        if problems:
            raise ScenarioProblems(problems)
        return self


class Workload(FrozenModel):
    """What the peers do."""

    dht: DHTWorkload | None = None
    """DHT requests; null: none."""
    training: TrainingWorkload | None = None
    """DMoE training; null: none (then no group may have role server, trainer or peer)."""


# ---- assertions ----------------------------------------------------------------------------------

_ASSERTION = re.compile(
    r"\s*(?P<metric>[\w.\-]+)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<threshold>\S+)\s*(?:during\s+(?P<during>\S+)\s*)?"
)


def metric_names(groups: Iterable[str] = ()) -> frozenset[str]:
    """Every summary key an assertion may name (see docs/scenarios.md, "Metrics")."""
    names = {f"{event}.{stat}" for event in EVENTS for stat in EVENT_STATS}
    names |= {f"dht.lookup.{field}.mean" for field in EVENT_FIELDS}
    names |= {f"train.loss.{stat}" for stat in VALUE_STATS}
    names |= {f"{counter}.{stat}" for counter in COUNTERS for stat in COUNTER_STATS}
    for group in groups:  # a trainer group's own training steps (unknown for other roles)
        names |= {f"moe.step.{group}.{stat}" for stat in EVENT_STATS}
    for gauge in ["peers.alive", *(f"peers.alive.{group}" for group in groups)]:
        names |= {f"{gauge}.{stat}" for stat in GAUGE_STATS}
    return frozenset(names)


_THRESHOLD_FORMS: tuple[tuple[str, Callable[[object], float]], ...] = (
    ("number", float),
    ("fraction", parse_fraction),  # only `99%` gets here: a plain `0.99` is a number
    ("duration", parse_duration),
    ("size", parse_size),
    ("bandwidth", parse_bandwidth),
)


def parse_threshold(value: object) -> tuple[float, str]:
    """A finite number in the metric's base unit, and what it was written as: `number` (`0.99`,
    `-1`), `fraction` (`99%`), `duration` (`3s`, `250ms`), `size` (`64KiB`) or `bandwidth`."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value), "number"
    for form, parse in _THRESHOLD_FORMS:
        try:
            number = float(parse(value))
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            return number, form
    raise ValueError(f"expected a threshold like `0.99`, `99%`, `3s`, got `{value}`")


MAX_BARE_LATENCY_THRESHOLD = 60.0
"""Operations give up after seconds (timeouts): a bare latency bound of a minute or more is
milliseconds without `ms`, and would pass whatever happened."""


def _measures(metric: str) -> Literal["fraction", "duration", "size", "number"]:
    """What a metric's values are, so what its threshold may be written as."""
    if metric_unit(metric) == "fraction":
        return "fraction"
    if metric_unit(metric) == "s":
        return "duration"
    return "size" if metric.startswith("rpc.bytes.") else "number"


def _threshold_problem(metric: str, op: str, written: object, number: float, form: str) -> str | None:
    """Why a threshold cannot mean what its writer meant for this metric, with the fix; None if fine.

    The unit must fit the metric: fractions (a number in [0, 1] or a percent) for rates and
    shares, durations (or bare seconds) for latencies, sizes (or bare bytes) for `rpc.bytes`, and
    plain numbers for counts, losses and hops. A percent under 1% as the lower bound of a rate is
    refused too: it passes when almost everything fails, and is `0.99` written as `0.99%`.
    """
    text, kind = str(written).strip(), _measures(metric)
    if kind == "fraction":
        if form == "number" and not 0 <= number <= 1:
            fix = f"`{number / 100:g}` or `{number:g}%`" if 1 < number <= 100 else "`0.99` or `99%`"
            return (
                f"`{metric}` is a fraction from 0 to 1, and `{text}` would mean {number * 100:g}%:"
                f" write it like {fix}"
            )
        if form == "fraction" and op in (">=", ">") and 0 < number < 0.01:
            meant = number * 100
            return (
                f"`{text}` is {number:g}: a lower bound under 1% on `{metric}` passes when almost every"
                f" operation fails; write `{meant:g}` or `{meant * 100:g}%` if you meant {meant * 100:g}%,"
                f" or `{number:g}` to keep {text}"
            )
        if form not in ("number", "fraction"):
            return f"`{metric}` is a fraction from 0 to 1, not a {form}: write it like `0.99` or `99%`"
    elif kind == "duration":
        if form == "number" and number >= MAX_BARE_LATENCY_THRESHOLD:
            why = "longer than any operation waits"
            return str(bare_slip(written, format_duration(number), why, ("ms",), "s"))
        if form not in ("number", "duration"):
            read = f" (read as {format_duration(number)})" if form == "fraction" else ""
            return f"`{metric}` is a latency: write a duration like `3s` or `250ms`, not `{text}`{read}"
    elif kind == "size":
        if form not in ("number", "size"):
            return f"`{metric}` counts bytes: write a size like `64KiB` or a number of bytes, not `{text}`"
    elif form != "number":
        return (
            f"`{metric}` ({describe_metric(metric)}) is a plain number: write the threshold without"
            f" a unit, not `{text}`"
        )
    return None


class Assertion(FrozenModel):
    """`<metric> <op> <threshold> [during <event>]`, e.g. `moe.step.p99 <= 3s during crash-wave`."""

    metric: str
    """A summary key such as `dht.get.success_rate` (docs/scenarios.md lists them all)."""
    op: Literal["<=", ">=", "==", "!=", "<", ">"]
    """Comparison."""
    threshold: float
    """In the metric's base unit (seconds, fractions, counts); a unit must fit the metric (`3s`
    for a latency, `99%` for a rate, none for a count)."""
    during: str | None = None
    """Only samples taken while this named event was active; null: the whole measured window."""

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold_fits_metric(cls, value: object, info: ValidationInfo) -> float:
        number, form = parse_threshold(value)
        metric, op = info.data.get("metric"), info.data.get("op")
        problem = (
            None if metric is None or op is None else _threshold_problem(metric, op, value, number, form)
        )
        if problem is not None:
            raise ValueError(problem)
        return number

    @model_validator(mode="before")
    @classmethod
    def _parse_text(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        match = _ASSERTION.fullmatch(data)
        if match is None:
            raise ValueError(
                f"expected `<metric> <op> <threshold> [during <event>]` like "
                f"`dht.get.success_rate >= 0.99`, got `{data}`"
            )
        return match.groupdict()

    @model_serializer
    def _as_text(self) -> str:
        return str(self)

    def __str__(self) -> str:
        threshold = repr(self.threshold).removesuffix(".0")
        if metric_unit(self.metric) == "s":
            threshold += "s"  # a bare number of seconds may be refused as a slip; a unit never is
        during = f" during {self.during}" if self.during else ""
        return f"{self.metric} {self.op} {threshold}{during}"


# ---- DHT settings ----------------------------------------------------------------------------------


class DHTSettings(FrozenModel):
    """Every peer's DHT node settings (`hivemind_core.dht.DHTConfig`); a key left out keeps its default."""

    k: int | None = Field(default=None, ge=1)
    """Bucket size, and how many nearest nodes a lookup converges on; null: the library's default, 20."""
    alpha: int | None = Field(default=None, ge=1)
    """Parallel RPCs per lookup; null: the library's default, 3."""
    replicas: int | None = Field(default=None, ge=1)
    """How many of the nearest nodes a value is stored on (at most `k`); null: the library's
    default, 5."""
    refresh_interval: PositiveDuration | None = None
    """A bucket that saw no traffic for this long is refreshed with a lookup of a random id in it
    (Kademlia's hour: `1h`); null: the library's default, 10 min."""
    republish_interval: PositiveDuration | None = None
    """How often a node stores what it holds again on the current nearest nodes; null: the
    library's default, 10 min."""
    rpc_timeout: PositiveDuration | None = None
    """How long an RPC to a contact whose round trips were never measured waits, and the longest
    any DHT RPC waits (a contact that misses its timeout leaves the routing table); null: the
    library's default, 3 s."""

    def config(self, **fixed: Any) -> DHTConfig:
        """The DHT nodes' config: the keys given, ``fixed`` (what the runner decides itself, such as
        ``max_per_subnet``) and the library's defaults for the rest."""
        from hivemind_core.dht import DHTConfig  # lazy: the format is read without loading the DHT

        return DHTConfig(**self.given(), **fixed)

    def given(self) -> dict[str, int | float]:
        """The keys set, by name (each a ``DHTConfig`` field of the same name)."""
        return {key: value for key, value in self.__dict__.items() if value is not None}

    @model_validator(mode="after")
    def _library_accepts(self) -> Self:
        """The combination must be one ``DHTConfig`` takes (`replicas` at most `k`), reported at
        the key a user gave."""
        from hivemind_core.dht import DHTConfigError

        try:
            self.config()
        except DHTConfigError as error:
            given, message = self.given(), str(error).replace("DHTConfig.", "")
            named = [field for field in error.fields if field in type(self).model_fields]
            blamed = next((word for word in named if word in given), None)
            left_out = [f"`{word}`" for word in named if word not in given]
            if left_out:
                message += f"; {' and '.join(left_out)} left out: the library's default"
            raise ScenarioProblems([((blamed,) if blamed else (), message)]) from None
        return self


# ---- the scenario ----------------------------------------------------------------------------------


_DHT_RATES = {
    "dht.get": "gets_per_second",
    "dht.store": "stores_per_second",
    "dht.lookup": "lookups_per_second",
}
"""The DHT workload's rate that issues each operation (its metrics are never observed at rate 0)."""


def _selectors(loc: Loc, event: _Event) -> list[tuple[Loc, Selector]]:
    """The peer selectors of an event with their key paths: a partition's sides, or a `select`."""
    if isinstance(event, PartitionEvent):
        return [((*loc, "sides", j), side) for j, side in enumerate(event.sides)]
    if isinstance(event, _SelectingEvent):
        return [((*loc, "select"), event.select)]
    return []


class Scenario(FrozenModel):
    """One experiment: world, peers, faults, workload and what must hold."""

    schema_version: Literal[1] = 1
    """Version of this format."""
    name: Annotated[str, _check_name("scenario name")]
    """Report folder name; default: the file's stem."""
    description: str = ""
    """One line shown in the report."""
    seed: int = Field(default=0, ge=0)
    """Root seed: every random stream derives from it and a stable name."""
    warmup: Duration = 60.0
    """Joins and bootstrap before the measured window: no faults, nothing measured."""
    duration: PositiveDuration
    """The measured window, after the warmup."""
    sample_interval: PositiveDuration = 10.0
    """Resolution of time series (alive peers, rates per interval)."""
    topology: Topology = Topology()
    """The backbone network."""
    peers: tuple[PeerGroup, ...] = Field(min_length=1)
    """Peer groups."""
    events: tuple[Event, ...] = ()
    """The fault timeline."""
    workload: Workload = Workload()
    """What the peers do."""
    dht: DHTSettings = DHTSettings()
    """Settings of every peer's DHT node (`k`, `alpha`, `replicas`, `refresh_interval`,
    `republish_interval`, `rpc_timeout`); keys left out keep the library's defaults."""
    assertions: tuple[Assertion, ...] = ()
    """Checks on the run's metrics; each is pass, fail or unknown (never observed)."""

    def group(self, name: str) -> PeerGroup:
        for group in self.peers:
            if group.group == name:
                return group
        raise KeyError(f"no group {name!r}")

    @property
    def total_peers(self) -> int:
        """Peers in all groups (each present, joining or away at some time of the run)."""
        return sum(group.count for group in self.peers)

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        problems = [
            *self._check_groups(),
            *self._check_regions(),
            *self._check_events(),
            *self._check_assertions(),
        ]
        if problems:
            raise ScenarioProblems(problems)
        return self

    def _check_groups(self) -> Iterator[tuple[Loc, str]]:
        seen: set[str] = set()
        for index, group in enumerate(self.peers):
            if group.group in seen:
                yield ("peers", index, "group"), f"duplicate group name `{group.group}`"
            seen.add(group.group)
        if self.sample_interval > self.duration:
            yield ("sample_interval",), "sample_interval is longer than the measured duration"
        training = self.workload.training
        for index, group in enumerate(self.peers):
            if group.role != "dht" and training is None:
                yield ("peers", index, "role"), f"role `{group.role}` needs a `workload.training` section"
            if group.join_at is not None and group.join_at >= self.duration:
                yield ("peers", index, "join_at"), "join_at is not before the end of the measured window"
        if training is not None:
            hosted = sum(g.count * g.experts for g in self.peers if g.hosts_experts)
            if not any(g.trains for g in self.peers):
                yield ("workload", "training"), "training needs a group with role trainer or peer"
            if hosted == 0:
                yield ("workload", "training"), "training needs a group with role server or peer"
            elif hosted > training.experts_in_grid:
                yield (
                    ("workload", "training", "grid"),
                    f"peers host {hosted} experts but the grid {list(training.grid)} has only "
                    f"{training.experts_in_grid}",
                )

    def _check_regions(self) -> Iterator[tuple[Loc, str]]:
        """Region names exist (world regions) or router numbers are in range (generated graphs);
        a graph file's nodes are checked when it is read."""
        known = self.topology.known_nodes()
        if known is None:
            return
        used: list[tuple[Loc, str | int]] = [
            (("peers", i, "regions", j), region)
            for i, group in enumerate(self.peers)
            for j, region in enumerate(group.regions or ())
        ]
        for i, event in enumerate(self.events):
            for where, selector in _selectors(("events", i), event):
                if selector.region is not None:
                    used.append(((*where, "region"), selector.region))
                for r, region in enumerate(selector.regions or ()):
                    used.append(((*where, "regions", r), region))
        for loc, region in used:
            if isinstance(region, str) and region.isdigit() and int(region) in known:
                yield loc, f"routers are numbers: write {region} without quotes"
            elif region not in known:
                names = sorted(str(node) for node in known)
                hint = suggest(region, names) or f" (nodes: {', '.join(names[:8])}{'...' * (len(names) > 8)})"
                yield loc, f"no topology node `{region}` in {self.topology.kind}{hint}"

    def _placed(self, nodes: list[str]) -> dict[str, str] | None:
        """Each peer's topology node (as text), placed as the runner places them: round-robin on
        the group's `regions`, default all ``nodes``. None when a group names a node that does not
        exist (reported on its own)."""
        placed: dict[str, str] = {}
        for group in self.peers:
            if group.regions and not {str(region) for region in group.regions} <= set(nodes):
                return None
            placed.update(zip(group.peer_names(), group.placed_on(nodes), strict=True))
        return placed

    def _check_events(self) -> Iterator[tuple[Loc, str]]:
        names: set[str] = set()
        known = self.topology.known_nodes() if any(_selectors((), e) for e in self.events) else None
        nodes = [str(node) for node in known or ()]
        placed = self._placed(nodes) if known is not None else None
        node_set = frozenset(nodes)
        for index, event in enumerate(self.events):
            loc: Loc = ("events", index)
            if event.name is not None:
                if event.name in names:
                    yield (*loc, "name"), f"duplicate event name `{event.name}`"
                names.add(event.name)
            if event.at >= self.duration:
                yield (
                    (*loc, "at"),
                    f"{format_duration(event.at)} is not before the end of the measured window "
                    f"(duration {format_duration(self.duration)})",
                )
            if isinstance(event, HealEvent | RestartEvent | _Operation) and event.duration is not None:
                yield (*loc, "duration"), f"a {event.action} is over at once: it takes no `duration`"
            if isinstance(event, ForwardEvent) and self.workload.training is None:
                yield (*loc, "action"), "a forward needs a `workload.training` section"
            partitioned = any(isinstance(e, PartitionEvent) and e.at <= event.at for e in self.events)
            if isinstance(event, HealEvent) and not partitioned:
                yield (*loc, "at"), "heal with no partition at or before it"
            for selector_loc, selector in _selectors(loc, event):
                problems = list(self._check_selector(selector_loc, selector))
                yield from problems
                if not problems:
                    yield from self._check_picks(selector_loc, selector, event, placed, node_set)

    def _check_selector(self, loc: Loc, selector: Selector) -> Iterator[tuple[Loc, str]]:
        """The groups, roles and peers a selector names exist."""
        groups = {group.group for group in self.peers}
        if selector.group is not None and selector.group not in groups:
            yield (*loc, "group"), f"no group `{selector.group}`{suggest(selector.group, groups)}"
        if selector.role is not None and not any(g.role == selector.role for g in self.peers):
            yield (*loc, "role"), f"no group has role `{selector.role}`"
        names = {name for group in self.peers for name in group.peer_names()} if selector.peers else set()
        for i, peer in enumerate(selector.peers or ()):
            if peer not in names:
                yield (*loc, "peers", i), f"no peer `{peer}` (peers are named `<group>-<index>` from 0)"

    def _check_picks(
        self,
        loc: Loc,
        selector: Selector,
        event: _Event,
        placed: dict[str, str] | None,
        nodes: frozenset[str],
    ) -> Iterator[tuple[Loc, str]]:
        """An event must act on some peer: its selector's keys, intersected over the peers as they
        are ``placed`` (regions unchecked when unknown), must leave one; else the run does nothing
        and still shades the event's window on every plot."""
        unknown: dict[str, None] = {}  # regions placement cannot judge here: reported on their own
        if selector.region is not None and (placed is None or str(selector.region) not in nodes):
            unknown["region"] = None
        if selector.regions is not None and (
            placed is None or not {str(r) for r in selector.regions} <= nodes
        ):
            unknown["regions"] = None
        judged = selector.model_copy(update=unknown)
        matched = [
            (name, group, (placed or {}).get(name, "")) for group in self.peers for name in group.peer_names()
        ]
        scope: list[str] = []  # what narrowed the peers so far: "group `servers`", "region `eu-west`"
        for key, kept in judged.narrow(matched):
            if not kept:
                yield (*loc, key), f"picks no peer: {self._picks_none(key, judged, scope, matched)}"
                return
            matched = kept
            if key == "regions":
                scope.append("regions " + ", ".join(f"`{region}`" for region in judged.regions or ()))
            elif key != "peers":
                scope.append(f"{key} `{getattr(judged, key)}`")
        groups = list({id(group): group for _, group, _ in matched}.values())
        if isinstance(event, MisbehaveEvent | SlowComputeEvent) and not any(g.hosts_experts for g in groups):
            yield loc, f"{event.action} needs peers that host experts (role server or peer)"
        if isinstance(event, ForwardEvent) and not any(g.trains for g in groups):
            yield loc, f"{event.action} needs peers that train (role trainer or peer)"
        late = [g for g in groups if g.join_at is not None and g.join_at > event.at]
        if late == groups and not isinstance(event, DegradeEvent | PartitionEvent):
            joins = ", ".join(f"`{g.group}` joins at {format_duration(g.join_at or 0)}" for g in late)
            yield (
                loc,
                (
                    f"picks no peer: the {event.action} at {format_duration(event.at)} acts on live peers,"
                    f" and group {joins} (move the event later, or select peers that are up)"
                ),
            )
        if selector.fraction and round(selector.fraction * len(matched)) == 0:  # 0%: a sweep's baseline
            yield (
                (*loc, "fraction"),
                f"picks no peer: {format_fraction(selector.fraction)} of the {len(matched)} peer(s) matched"
                " rounds to 0 (write `count: 1`, or a larger fraction)",
            )

    def _picks_none(self, key: str, selector: Selector, scope: list[str], matched: list[Candidate]) -> str:
        """Why ``key`` leaves none of the peers ``matched`` by the keys before it, with the fix."""
        if key == "role":
            role = self.group(str(selector.group)).role
            return (
                f"group `{selector.group}` has role `{role}`, not `{selector.role}` (drop `role` or `group`)"
            )
        if key in ("region", "regions"):
            wanted = [selector.region] if key == "region" else list(selector.regions or ())
            where = f"`{wanted[0]}`" if key == "region" else "any of " + ", ".join(f"`{r}`" for r in wanted)
            whose = f" of {' with '.join(scope)}" if scope else ""
            occupied = ", ".join(dict.fromkeys(node for _, _, node in matched))
            fix = f"select one of those, or add it to {'the' if selector.group else 'a'} group's `regions`"
            who = "they" if scope else "peers"
            return f"no peer{whose} is placed on {where}; {who} are on {occupied} ({fix})"
        listed = ", ".join(name for name, _, _ in matched[:3]) + ", ..." * (len(matched) > 3)
        return (
            f"{' with '.join(scope)} matches {len(matched)} peer(s) ({listed}) and `{key}` names none of them"
        )

    def _unobservable(self, metric: str) -> str | None:
        """Why a known metric can never be observed in this scenario (with the fix), or None."""
        if metric.startswith(("train.loss.", "moe.")) and self.workload.training is None:
            return "the scenario has no training (add a `workload.training` section, or drop this assertion)"
        if metric.startswith("moe.step."):  # `moe.step.<group>.<stat>`: one group's steps
            group = next((g for g in self.peers if metric.rpartition(".")[0] == f"moe.step.{g.group}"), None)
            if group is not None and not group.trains:
                return (
                    f"group `{group.group}` has role {group.role} and does not train (name a trainer group)"
                )
        scripted = {event.action for event in self.events if isinstance(event, _Operation)}
        if metric.startswith("moe.forward.") and "forward" not in scripted:
            return "only scripted `forward` events record it (add one, or drop this assertion)"
        operation = next((op for op in _DHT_RATES if metric.startswith(f"{op}.")), None)
        if operation is None or operation.removeprefix("dht.") in scripted:
            return None
        dht, rate = self.workload.dht, _DHT_RATES[operation]
        if dht is None:
            return "the scenario has no DHT workload (add a `workload.dht` section, or drop this assertion)"
        if getattr(dht, rate) == 0:
            return f"`workload.dht.{rate}` is 0 (raise it, or drop this assertion)"
        if operation == "dht.get" and dht.stores_per_second == 0:
            return "gets ask only for stored keys, and `workload.dht.stores_per_second` is 0 (raise it)"
        return None

    def _check_assertions(self) -> Iterator[tuple[Loc, str]]:
        known = metric_names(tuple(group.group for group in self.peers))
        events = {event.name: event for event in self.events if event.name is not None}
        for index, assertion in enumerate(self.assertions):
            loc: Loc = ("assertions", index)
            if assertion.metric not in known:
                yield loc, f"unknown metric `{assertion.metric}`{suggest(assertion.metric, known)}"
            elif (why := self._unobservable(assertion.metric)) is not None:
                yield loc, f"`{assertion.metric}` can never be observed: {why}"
            during = assertion.during
            if during is not None and during not in events:
                hint = suggest(during, events) or (" (no event has a `name`)" if not events else "")
                yield loc, f"`during {during}`: no event named so{hint}"
            elif during is not None and isinstance(events[during], HealEvent | RestartEvent | _Operation):
                yield (
                    loc,
                    (
                        f"`during {during}`: a {events[during].action} is over at once, so nothing is"
                        " observed during it (drop `during`, or name an event that lasts)"
                    ),
                )


EVENT_ACTIONS = {get_args(cls.model_fields["action"].annotation)[0]: cls for cls in EVENT_TYPES}
"""Each `action` value and its model."""
