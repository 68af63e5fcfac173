"""Hypothesis strategies for scenarios, valid by construction, as the YAML-level data users write.

Every value is plain data (dicts, lists, strings with units like ``"250ms"``), the form a
scenario file has, so a drawn scenario can be written out with ``to_yaml`` and read back with
``hivemind-sim validate``/``run``, and a failing example is already a scenario to replay.
``scenarios()`` draws whole scenarios; the pieces (``topologies``, ``links``, ``churns``,
``peer_groups``, ``selectors``, ``events``, ``hostile_behaviours``, ``misbehaviours``,
``workloads``) are public for tests that want to fix some parts and draw the rest::

    @given(scenarios(max_peers=6, max_events=3, max_duration=30.0))
    def test_my_property(data: dict) -> None:
        scenario = parse_scenario(to_yaml(data))
        ...

Sizes are bounded by the parameters (``max_peers``, ``max_events``, ``max_duration``) so a
drawn scenario stays small enough to run in a test. Graph-file topologies and churn traces need
files and are not drawn.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, get_args

import yaml
from hypothesis import strategies as st

from .scenario.format import schema
from .scenario.format.units import parse_duration

Data = dict[str, Any]
"""One YAML mapping (a scenario, a group, an event...)."""
Node = str | int
"""A topology node: a world region's name or a generated graph's router number."""

WORLD_REGIONS: tuple[str, ...] = (
    "us-east",
    "us-west",
    "eu-west",
    "eu-central",
    "asia-east",
    "asia-south",
    "sa-east",
    "oceania",
)
"""The nodes of the `world_regions` topology (tests/test_strategies.py checks them against it)."""
GENERATED_KINDS: tuple[str, ...] = ("waxman", "barabasi_albert", "random_geometric")
HOSTILE_BEHAVIOURS: tuple[str, ...] = get_args(schema.HostileBehaviour)
"""What a `hostile` event's peer does (docs/scenarios.md)."""
MISBEHAVIOURS: tuple[str, ...] = get_args(schema.MisbehaveEvent.model_fields["output"].annotation)
"""What a `misbehave` event's experts answer."""
OPERATIONS: tuple[str, ...] = tuple(
    get_args(op.model_fields["action"].annotation)[0] for op in schema.OPERATIONS
)
"""Scripted operations: each acts once on the peers its selector picks (they take no `duration`)."""
_EXPERT_ROLES = frozenset({"server", "peer"})
_TRAINER_ROLES = frozenset({"trainer", "peer"})


# ---- quantities ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def durations(min_seconds: float = 0.0, max_seconds: float = 60.0) -> st.SearchStrategy[str]:
    """A duration written with a unit (`250ms`, `12s`) within the bounds (whole milliseconds)."""
    low, high = math.ceil(min_seconds * 1000 - 1e-6), math.floor(max_seconds * 1000 + 1e-6)
    return st.integers(low, high).map(lambda ms: f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms")


@functools.lru_cache(maxsize=64)
def percents(low: int = 0, high: int = 100) -> st.SearchStrategy[str]:
    """A fraction written as a whole percent (`30%`)."""
    return st.integers(low, high).map(lambda p: f"{p}%")


# ---- the world -----------------------------------------------------------------------------------


@st.composite
def topologies(draw: st.DrawFn, max_nodes: int = 12) -> Data:
    """A `topology`: world regions or a generated graph of 1..``max_nodes`` routers, with jitter,
    loss, backbone bandwidth and TCP's effects sometimes."""
    kind = draw(st.sampled_from(("world_regions", *GENERATED_KINDS)))
    data: Data = {"kind": kind}
    if kind != "world_regions":
        data["nodes"] = draw(st.integers(1, max_nodes))
        params = draw(_GENERATOR_PARAMS[kind])
        if params:
            data["params"] = params
    data.update(draw(_BACKBONE))
    return data


_MAX_LATENCY = {"max_latency": st.sampled_from(("20ms", "80ms", "150ms"))}
_GENERATOR_PARAMS = {
    "waxman": st.fixed_dictionaries({}, optional={"alpha": st.sampled_from((0.2, 0.4, 0.8)), **_MAX_LATENCY}),
    "barabasi_albert": st.fixed_dictionaries({}, optional={"m": st.just(1), **_MAX_LATENCY}),
    "random_geometric": st.fixed_dictionaries(
        {}, optional={"radius": st.sampled_from((0.3, 0.6, 1.0)), **_MAX_LATENCY}
    ),
}
_BACKBONE = st.fixed_dictionaries(
    {},
    optional={
        "jitter": percents(0, 20),
        "loss": percents(0, 2),
        "backbone_bandwidth": st.sampled_from(("100Mbit/s", "1Gbit/s")),
        "tcp": st.fixed_dictionaries({}, optional={"handshake": st.booleans(), "retransmit": st.booleans()}),
    },
)


def topology_nodes(topology: Data) -> list[Node]:
    """The nodes peers are placed on, in placement order (as the runner places them)."""
    if topology.get("kind", "world_regions") == "world_regions":
        return list(WORLD_REGIONS)
    return list(range(int(topology["nodes"])))


# ---- peers ---------------------------------------------------------------------------------------


def _quantity(*values: str) -> st.SearchStrategy[Any]:
    """A constant, or a distribution over ``values`` (in increasing order) drawn per peer."""
    constant = st.sampled_from(values)
    choice = st.lists(constant, min_size=1, max_size=3).map(
        lambda vs: {"distribution": "choice", "values": vs}
    )
    uniform = st.lists(st.integers(0, len(values) - 1), min_size=2, max_size=2).map(
        lambda ij: {"distribution": "uniform", "low": values[min(ij)], "high": values[max(ij)]}
    )
    return st.one_of(constant, choice, uniform)


def links() -> st.SearchStrategy[Data]:
    """An access `link`: bandwidths, last-mile latency (a distribution sometimes) and loss."""
    return _LINKS


_LINKS = st.fixed_dictionaries(
    {},
    optional={
        "uplink": _quantity("1Mbit/s", "10Mbit/s", "100Mbit/s"),
        "downlink": _quantity("5Mbit/s", "50Mbit/s", "1Gbit/s"),
        "latency": _quantity("1ms", "10ms", "40ms", "120ms"),
        "loss": percents(0, 3),
    },
)
_HARDWARE = st.fixed_dictionaries({"device": _quantity("50GFLOP/s", "1TFLOP/s", "10TFLOP/s")})


@st.composite
def churns(draw: st.DrawFn, count: int) -> Data:
    """A `churn` for a group of ``count`` peers: drawn session and downtime lengths (every
    distribution), graceful share, alive bounds and start."""
    data: Data = {"session": draw(_CHURN_TIME), "downtime": draw(_CHURN_TIME)}
    data.update(draw(_CHURN_OPTIONS))
    if draw(st.booleans()):
        data["min_alive"] = draw(st.integers(0, count))
    if draw(st.booleans()):
        data["max_alive"] = draw(st.integers(max(1, data.get("min_alive", 0)), count))
    return data


_CHURN_TIME = st.one_of(
    st.fixed_dictionaries({"distribution": st.just("exponential"), "mean": durations(5, 120)}),
    *(
        st.fixed_dictionaries(
            {
                "distribution": st.just("weibull"),
                "shape": st.sampled_from((0.5, 1.0, 2.0)),
                key: durations(5, 120),
            }
        )
        for key in ("median", "scale")
    ),
    st.fixed_dictionaries(
        {
            "distribution": st.just("lognormal"),
            "median": durations(5, 120),
            "sigma": st.sampled_from((0.0, 0.5, 1.0)),
        }
    ),
    st.fixed_dictionaries(
        {"distribution": st.just("pareto"), "shape": st.sampled_from((1.5, 2.5)), "minimum": durations(2, 60)}
    ),
)
_CHURN_OPTIONS = st.fixed_dictionaries(
    {}, optional={"graceful": percents(), "start": st.sampled_from(("stationary", "lockstep"))}
)
_TRAINING_ROLES = (("peer",), ("trainer", "server"), ("server", "trainer"))
"""The groups a training swarm starts from: some group trains and some hosts experts."""
_GROUP_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,7}", fullmatch=True)


@st.composite
def peer_groups(
    draw: st.DrawFn,
    *,
    nodes: Sequence[Node] = WORLD_REGIONS,
    max_peers: int = 12,
    max_groups: int = 3,
    duration: float = 60.0,
    training: bool = False,
    churn: bool = True,
) -> list[Data]:
    """`peers`: 1..``max_groups`` groups of ``max_peers`` peers in all, placed on ``nodes``.

    With ``training`` some group trains and some hosts experts; without it every group has role
    `dht`. The first group joins during the warmup with no peer in client mode, so someone can
    bootstrap; later groups may join at a time before ``duration`` (a flash crowd).
    """
    if training:
        pairs = min(max_peers, max_groups) >= 2  # room for a trainer group and a server group
        roles = list(draw(st.sampled_from(_TRAINING_ROLES if pairs else _TRAINING_ROLES[:1])))
    else:
        roles = ["dht"]
    others = ("dht", "server", "trainer", "peer") if training else ("dht",)
    extra = draw(st.lists(st.sampled_from(others), max_size=max(0, min(max_groups, max_peers) - len(roles))))
    roles += extra
    names = draw(st.lists(_GROUP_NAMES, min_size=len(roles), max_size=len(roles), unique_by=str.lower))
    budget = max_peers - len(roles)  # every group has at least one peer
    groups: list[Data] = []
    for index, (name, role) in enumerate(zip(names, roles, strict=True)):
        count = 1 + draw(st.integers(0, budget))
        budget -= count - 1
        group: Data = {"group": name, "role": role, "count": count}
        if draw(st.booleans()):
            group["regions"] = draw(
                st.lists(st.sampled_from(tuple(nodes)), min_size=1, max_size=3, unique=True)
            )
        if index > 0 and draw(st.booleans()):
            group["join_at"] = draw(durations(0, duration * 0.9))
        if index > 0 and draw(st.booleans()):
            group["client_mode"] = draw(percents(0, 50))
        if draw(st.booleans()):
            group["link"] = draw(links())
        if draw(st.booleans()):
            group["hardware"] = draw(_HARDWARE)
        if role in _EXPERT_ROLES:
            group["experts"] = draw(st.integers(1, 3))
        if role in _TRAINER_ROLES and draw(st.booleans()):
            group["concurrent_batches"] = draw(st.integers(1, 2))
        if churn and draw(st.booleans()):
            group["churn"] = draw(churns(count))
        groups.append(group)
    return groups


def _placed(groups: Sequence[Data], nodes: Sequence[Node]) -> list[tuple[str, Data, Node]]:
    """Every peer's name, group and node, as the runner places them (round-robin on `regions`)."""
    peers = []
    for group in groups:
        regions = list(group.get("regions") or nodes)
        for index in range(group["count"]):
            peers.append((f"{group['group']}-{index}", group, regions[index % len(regions)]))
    return peers


# ---- events --------------------------------------------------------------------------------------


@st.composite
def selectors(
    draw: st.DrawFn,
    groups: Sequence[Data],
    nodes: Sequence[Node],
    *,
    eligible: Sequence[Data] | None = None,
) -> Data:
    """A `select` that picks at least one peer of the ``eligible`` groups (default: all).

    Draws a base (a group, a role, a group and one of its nodes, some nodes, named peers) and
    sometimes narrows it with a `fraction` or a `count` that still keeps a peer.
    """
    chosen = list(eligible if eligible is not None else groups)
    group = draw(st.sampled_from(chosen))
    placed = _placed(groups, nodes)
    mine = [peer for peer in placed if peer[1] is group]
    kind = draw(st.sampled_from(("group", "role", "region", "regions", "peers")))
    if kind == "group":
        select: Data = {"group": group["group"]}
        matched = mine
    elif kind == "role":
        select = {"role": group["role"]}
        matched = [peer for peer in placed if peer[1]["role"] == group["role"]]
    elif kind == "region":
        node = draw(st.sampled_from([peer[2] for peer in mine]))
        select = {"group": group["group"], "region": node}
        matched = [peer for peer in mine if peer[2] == node]
    elif kind == "regions":
        wanted = draw(
            st.lists(st.sampled_from([peer[2] for peer in mine]), min_size=1, max_size=3, unique=True)
        )
        select = {"regions": wanted}
        matched = [peer for peer in placed if peer[2] in wanted]
    else:
        names = draw(
            st.lists(st.sampled_from([peer[0] for peer in mine]), min_size=1, max_size=3, unique=True)
        )
        select = {"peers": names}
        matched = [peer for peer in placed if peer[0] in names]
    narrow = draw(st.sampled_from(("none", "fraction", "count")))
    if narrow == "fraction":  # rounds to at least one peer: p * n / 100 > 0.5
        select["fraction"] = draw(percents(50 // len(matched) + 1, 100))
    elif narrow == "count":
        select["count"] = draw(st.integers(1, len(matched)))
    return select


def _present(group: Data, at: float) -> bool:
    return "join_at" not in group or parse_duration(group["join_at"]) <= at


@st.composite
def hostile_behaviours(draw: st.DrawFn) -> Data:
    """A `hostile` event's `behaviour` (with a `rate` for a flood, sometimes)."""
    behaviour = draw(st.sampled_from(HOSTILE_BEHAVIOURS))
    data: Data = {"behaviour": behaviour}
    if behaviour in schema.FLOODS and draw(st.booleans()):
        data["rate"] = draw(st.sampled_from(("20/s", "200/s", "600/min", 50)))
    return data


@st.composite
def misbehaviours(draw: st.DrawFn) -> Data:
    """A `misbehave` event's `output` (with a `delay` for a slow one, sometimes)."""
    output = draw(st.sampled_from(MISBEHAVIOURS))
    data: Data = {"output": output}
    if output == "slow" and draw(st.booleans()):
        data["delay"] = draw(durations(0.1, 10))
    return data


@st.composite
def events(
    draw: st.DrawFn,
    groups: Sequence[Data],
    nodes: Sequence[Node],
    *,
    duration: float,
    max_events: int = 5,
    training: bool = False,
) -> list[Data]:
    """`events`: up to ``max_events`` of every kind the schema knows, each picking peers that
    exist (and are up, expert-hosting or training where its kind needs it) at its time."""
    hosts = [g for g in groups if g["role"] in _EXPERT_ROLES]
    trains = [g for g in groups if g["role"] in _TRAINER_ROLES]
    kinds = [a for a in schema.EVENT_ACTIONS if a not in _NEEDS_HOSTS | {"forward"}]
    kinds += sorted(_NEEDS_HOSTS) if hosts else []
    kinds += ["forward"] if trains and training else []
    count = draw(st.integers(0, max_events))
    drawn: list[Data] = []
    partitioned_at: float | None = None
    for _ in range(count):
        action = draw(st.sampled_from(tuple(kinds)))
        if action == "heal" and partitioned_at is None:
            action = "partition"
        earliest = partitioned_at if action == "heal" and partitioned_at is not None else 0.0
        at_text = draw(durations(earliest, duration * 0.95))
        at = parse_duration(at_text)
        event: Data = {"action": action, "at": at_text}
        if draw(st.booleans()):
            event["name"] = f"{draw(_GROUP_NAMES)}.{len(drawn)}"  # unique: no other has this suffix
        if action not in ("heal", "restart", *OPERATIONS) and draw(st.booleans()):
            event["duration"] = draw(durations(0.5, duration))
        if action == "partition":
            sides = [draw(selectors(groups, nodes)) for _ in range(draw(st.integers(1, 2)))]
            event["sides"] = [side for i, side in enumerate(sides) if side not in sides[:i]]
            partitioned_at = at if partitioned_at is None else min(partitioned_at, at)
        elif action == "degrade":
            event["select"] = draw(selectors(groups, nodes))
            event.update(draw(_DEGRADE))
        elif action != "heal":
            eligible = {
                "slow_compute": hosts,
                "misbehave": hosts,
                "forward": trains,
            }.get(action, groups)
            eligible = [g for g in eligible if _present(g, at)]
            if not eligible:
                continue
            event["select"] = draw(selectors(groups, nodes, eligible=eligible))
            event.update(draw(_event_params(action)))
        drawn.append(event)
    return drawn


_NEEDS_HOSTS = frozenset({"slow_compute", "misbehave"})
_DEGRADE = st.fixed_dictionaries(
    {},
    optional={
        "latency": st.sampled_from(("20ms", "200ms")),
        "loss": percents(1, 30),
        "bandwidth": st.sampled_from(("256kbit/s", "2Mbit/s")),
    },
).filter(bool)
_KEYS = st.sampled_from(("a", "b", "key7"))
_STORE = st.fixed_dictionaries(
    {"key": _KEYS},
    optional={"ttl": durations(1, 600), "value_size": st.sampled_from(("1B", "16B", "1KiB"))},
)
_LOOKUP = st.fixed_dictionaries({}, optional={"target": st.integers(0, 2**160 - 1)})


@st.composite
def _event_params(draw: st.DrawFn, action: str) -> Data:
    """The keys besides `at`, `duration`, `name` and `select` of a selecting event."""
    if action == "slow_compute":
        return {"factor": draw(st.sampled_from((1, 2.5, 10, 100)))}
    if action == "misbehave":
        return draw(misbehaviours())
    if action == "hostile":
        return draw(hostile_behaviours())
    if action == "store":
        return draw(_STORE)
    if action == "get":
        return {"key": draw(_KEYS)}
    if action == "lookup":
        return draw(_LOOKUP)
    return {}


# ---- workload and the whole scenario -------------------------------------------------------------


@st.composite
def workloads(draw: st.DrawFn, groups: Sequence[Data], *, training: bool, dht: bool | None = None) -> Data:
    """A `workload`: DHT requests (sometimes; always when ``dht``) and, with ``training``, DMoE
    training on a grid large enough for every hosted expert."""
    data: Data = {}
    if dht or (dht is None and draw(st.booleans())):
        data["dht"] = draw(_DHT_WORKLOAD)
    if training:
        hosted = sum(g["count"] * g.get("experts", 1) for g in groups if g["role"] in _EXPERT_ROLES)
        if draw(st.booleans()):
            grid = [hosted + draw(st.integers(0, 3))]
        else:
            first = draw(st.integers(1, hosted))
            grid = [first, -(-hosted // first) + draw(st.integers(0, 2))]
        k_best = draw(st.integers(1, min(4, math.prod(grid))))
        spec: Data = {
            "model": draw(_MODEL),
            "grid": grid,
            "k_best": k_best,
            "k_min": draw(st.integers(1, k_best)),
            "batch_size": draw(st.integers(1, 8)),
            "forward_timeout": draw(durations(0.5, 3)),
            "backward_timeout": draw(durations(0.5, 3)),
        }
        spec.update(draw(_TRAINING_OPTIONS))
        data["training"] = spec
    return data


_RATES = st.sampled_from((0, 0.5, 1, 3))
_DHT_WORKLOAD = st.fixed_dictionaries(
    {},
    optional={
        "stores_per_second": _RATES,
        "gets_per_second": _RATES,
        "lookups_per_second": _RATES,
        "keys": st.integers(1, 100),
        "popularity": st.one_of(
            st.just({"distribution": "uniform"}),
            st.sampled_from((0.8, 1.1)).map(lambda e: {"distribution": "zipf", "exponent": e}),
        ),
        "ttl": durations(10, 3600),
        "value_size": st.sampled_from(("8B", "64B", "1KiB")),
    },
)
_MODEL = st.fixed_dictionaries(
    {"hidden_dim": st.sampled_from((4, 8)), "expert": st.sampled_from(("ffn", "transformer"))}
)
_TRAINING_OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "optimizer": st.sampled_from(({"name": "sgd", "lr": 0.01}, {"name": "adam"})),
        "batches_in_flight": st.just(0),
    },
)
_ASSERTIONS = st.lists(
    st.sampled_from(("peers.alive.min >= 0", "rpc.messages.total >= 0", "peers.errors.total == 0")),
    max_size=2,
    unique=True,
)


@st.composite
def scenarios(
    draw: st.DrawFn,
    *,
    max_peers: int = 12,
    max_groups: int = 3,
    max_events: int = 5,
    min_duration: float = 10.0,
    max_duration: float = 120.0,
    training: bool | None = None,
    churn: bool = True,
) -> Data:
    """A whole scenario that validates: topology, groups, events, workload and an assertion or two.

    ``max_peers``/``max_groups`` bound the swarm, ``max_events`` the timeline, and the measured
    window lasts ``min_duration``..``max_duration`` seconds (the warmup is generous: 30 s to a
    minute). ``training`` None draws it; ``churn`` False keeps every peer up.
    """
    topology = draw(topologies())
    nodes = topology_nodes(topology)
    duration_text = draw(durations(min_duration, max_duration))
    duration = parse_duration(duration_text)
    trains = draw(st.booleans()) if training is None else training
    groups = draw(
        peer_groups(
            nodes=nodes,
            max_peers=max_peers,
            max_groups=max_groups,
            duration=duration,
            training=trains,
            churn=churn,
        )
    )
    data: Data = {
        "schema_version": 1,
        "name": "drawn",
        "seed": draw(st.integers(0, 2**32 - 1)),
        "warmup": draw(durations(30, 60)),
        "duration": duration_text,
        "sample_interval": draw(durations(min(1.0, duration), duration)),
        "topology": topology,
        "peers": groups,
        "events": draw(events(groups, nodes, duration=duration, max_events=max_events, training=trains)),
        "workload": draw(workloads(groups, training=trains)),
    }
    data["assertions"] = draw(_ASSERTIONS)
    return data


def to_yaml(data: Data) -> str:
    """A drawn scenario (or any part of one) as YAML text, as a user would write it."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
