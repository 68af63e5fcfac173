"""Backbone topologies: networkx graphs whose edges carry one-way latency in seconds.

Peers attach to a backbone node through their own access link (see ``network.AccessLink``);
the latency between two backbone nodes is the shortest path over ``latency`` edge weights.

Edges may also carry a ``bandwidth`` in bits per second (or take the topology's
``backbone_bps``). Frames then queue on the slowest edge of their path, its *bottleneck*,
FIFO per direction, as they do on access links; the other edges of the path cost nothing but
their latency. That keeps one queue per frame, found by one cached lookup per node pair, so it
stays cheap for 10,000 peers; the price is that traffic loads only the bottleneck of its own
path, so a fast edge that many paths cross without it being their bottleneck never congests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

Node = Hashable

# Typical round-trip times between cloud regions in milliseconds, rounded from public
# inter-region latency dashboards. Good enough to give a simulation realistic spread.
WORLD_REGIONS_RTT_MS: dict[tuple[str, str], float] = {
    ("us-east", "us-west"): 65,
    ("us-east", "eu-west"): 75,
    ("us-east", "eu-central"): 90,
    ("us-east", "asia-east"): 160,
    ("us-east", "asia-south"): 220,
    ("us-east", "sa-east"): 115,
    ("us-east", "oceania"): 200,
    ("us-west", "eu-west"): 140,
    ("us-west", "eu-central"): 150,
    ("us-west", "asia-east"): 105,
    ("us-west", "asia-south"): 170,
    ("us-west", "sa-east"): 175,
    ("us-west", "oceania"): 140,
    ("eu-west", "eu-central"): 20,
    ("eu-west", "asia-east"): 220,
    ("eu-west", "asia-south"): 160,
    ("eu-west", "sa-east"): 185,
    ("eu-west", "oceania"): 270,
    ("eu-central", "asia-east"): 230,
    ("eu-central", "asia-south"): 150,
    ("eu-central", "sa-east"): 200,
    ("eu-central", "oceania"): 280,
    ("asia-east", "asia-south"): 70,
    ("asia-east", "sa-east"): 260,
    ("asia-east", "oceania"): 115,
    ("asia-south", "sa-east"): 320,
    ("asia-south", "oceania"): 95,
    ("sa-east", "oceania"): 310,
}


@dataclass(frozen=True, slots=True)
class Bottleneck:
    """The slowest edge on the path between two backbone nodes, where their frames queue."""

    edge: tuple[Node, Node]
    """The edge in the direction of travel: each direction has its own queue."""
    bytes_per_s: float
    offset: float
    """Latency from the path's first node to the start of this edge, in seconds."""


class Topology:
    """A backbone graph with cached shortest-path latencies between its nodes.

    ``backbone_bps`` is the bandwidth (bits/s) of every edge that has no ``bandwidth`` of its
    own; None (and ``inf``) means unlimited, the default.
    """

    def __init__(self, graph: nx.Graph, *, name: str = "custom", backbone_bps: float | None = None) -> None:
        if graph.number_of_nodes() == 0:
            raise ValueError("a topology needs at least one node")
        if backbone_bps is not None and not _is_bandwidth(backbone_bps):
            raise ValueError(f"backbone bandwidth must be a number of bits/s > 0, got {backbone_bps!r}")
        limited = False
        for a, b, data in graph.edges(data=True):
            latency = data.get("latency")
            if not isinstance(latency, int | float) or not 0 <= latency < math.inf:
                raise ValueError(
                    f"edge {a!r}-{b!r} needs a finite 'latency' >= 0 in seconds, got {latency!r}"
                )
            bandwidth = data.get("bandwidth", backbone_bps)
            if bandwidth is not None and not _is_bandwidth(bandwidth):
                raise ValueError(f"edge {a!r}-{b!r}: 'bandwidth' must be bits/s > 0, got {bandwidth!r}")
            limited = limited or (bandwidth is not None and bandwidth < math.inf)
        self.graph = graph
        self.name = name
        self.backbone_bps = backbone_bps
        self.limited = limited
        """Whether any edge has a finite bandwidth (else ``bottleneck`` is always None)."""
        self._distances: dict[Node, dict[Node, float]] = {}
        self._predecessors: dict[Node, dict[Node, list[Node]]] = {}
        self._bottlenecks: dict[tuple[Node, Node], Bottleneck | None] = {}

    def with_backbone_bandwidth(self, bps: float | None) -> Topology:
        """The same backbone with ``bps`` on every edge that has no bandwidth of its own."""
        return Topology(self.graph, name=self.name, backbone_bps=bps)

    def bandwidth(self, a: Node, b: Node) -> float:
        """Bandwidth of the edge between ``a`` and ``b`` in bits/s (``inf``: unlimited)."""
        bandwidth = self.graph.edges[a, b].get("bandwidth", self.backbone_bps)
        return math.inf if bandwidth is None else float(bandwidth)

    def bottleneck(self, a: Node, b: Node) -> Bottleneck | None:
        """The slowest edge on the shortest path from ``a`` to ``b`` (the first one from ``a``
        among equals); None when the path has no finite bandwidth, or no path exists."""
        key = (a, b)
        try:
            return self._bottlenecks[key]
        except KeyError:
            pass
        found = None
        if self.limited and a != b:
            self.latency(a, b)  # fills the shortest-path tree from a
            predecessors, distances = self._predecessors[a], self._distances[a]
            path = [b]
            while path[-1] != a and path[-1] in predecessors:
                path.append(predecessors[path[-1]][0])
            if path[-1] == a:
                path.reverse()
                slowest = min(range(len(path) - 1), key=lambda i: self.bandwidth(path[i], path[i + 1]))
                u, v = path[slowest], path[slowest + 1]
                bandwidth = self.bandwidth(u, v)
                if bandwidth < math.inf:
                    found = Bottleneck((u, v), bandwidth / 8, distances[u])
        self._bottlenecks[key] = found
        return found

    @property
    def nodes(self) -> list[Node]:
        return list(self.graph.nodes)

    def __contains__(self, node: Node) -> bool:
        return node in self.graph

    def latency(self, a: Node, b: Node) -> float:
        """One-way latency from ``a`` to ``b`` in seconds; ``inf`` if no path connects them."""
        if a == b:
            return 0.0
        distances = self._distances.get(a)
        if distances is None:
            if self.limited:  # bottlenecks need the paths too: one search gives both
                predecessors, distances = nx.dijkstra_predecessor_and_distance(
                    self.graph, a, weight="latency"
                )
                self._predecessors[a] = predecessors
            else:
                distances = nx.single_source_dijkstra_path_length(self.graph, a, weight="latency")
            self._distances[a] = distances
        return distances.get(b, math.inf)

    # ---- builders -------------------------------------------------------------------------

    @classmethod
    def single(cls) -> Topology:
        """One backbone node: latency comes only from the peers' access links."""
        graph = nx.Graph()
        graph.add_node("local")
        return cls(graph, name="single")

    @classmethod
    def from_rtt_matrix(cls, rtt_ms: Mapping[tuple[str, str], float], *, name: str = "regions") -> Topology:
        """Regions joined pairwise, each link's one-way latency being half the given RTT."""
        graph = nx.Graph()
        for (a, b), rtt in rtt_ms.items():
            if rtt < 0:
                raise ValueError(f"RTT between {a!r} and {b!r} must be >= 0, got {rtt}")
            graph.add_edge(a, b, latency=rtt / 2000.0)
        return cls(graph, name=name)

    @classmethod
    def world_regions(cls) -> Topology:
        """Eight cloud regions with typical inter-region round-trip times."""
        return cls.from_rtt_matrix(WORLD_REGIONS_RTT_MS, name="world-regions")

    @classmethod
    def waxman(
        cls, n: int, *, alpha: float = 0.4, beta: float = 0.1, max_latency: float = 0.1, seed: int = 0
    ) -> Topology:
        """Waxman random graph in the unit square; latency proportional to distance."""
        graph = nx.waxman_graph(n, beta=beta, alpha=alpha, seed=seed)
        return cls(_connected_by_distance(graph, max_latency / math.sqrt(2)), name="waxman")

    @classmethod
    def random_geometric(
        cls, n: int, *, radius: float = 0.2, max_latency: float = 0.1, seed: int = 0
    ) -> Topology:
        """Random geometric graph in the unit square; latency proportional to distance."""
        graph = nx.random_geometric_graph(n, radius, seed=seed)
        return cls(_connected_by_distance(graph, max_latency / math.sqrt(2)), name="geometric")

    @classmethod
    def barabasi_albert(
        cls, n: int, *, m: int = 2, min_latency: float = 0.002, max_latency: float = 0.05, seed: int = 0
    ) -> Topology:
        """Scale-free graph (preferential attachment) with latencies drawn uniformly per edge."""
        rng = random.Random(seed)
        graph = nx.barabasi_albert_graph(n, m, seed=seed)
        for a, b in graph.edges:
            graph.edges[a, b]["latency"] = rng.uniform(min_latency, max_latency)
        return cls(graph, name="barabasi-albert")

    @classmethod
    def from_graphml(
        cls,
        path: str | Path,
        *,
        latency_attribute: str = "latency",
        scale: float = 1.0,
        bandwidth_attribute: str = "bandwidth",
        bandwidth_scale: float = 1.0,
        backbone_bps: float | None = None,
    ) -> Topology:
        """Load a GraphML file (GML when its suffix is ``.gml``); ``scale`` converts its latency
        unit to seconds (ms: 0.001).

        Edges with a ``bandwidth_attribute`` get that bandwidth times ``bandwidth_scale``
        (to bits/s: Mbit/s is 1e6); the others get ``backbone_bps`` (None: unlimited).
        """
        read = nx.read_gml if Path(path).suffix.lower() == ".gml" else nx.read_graphml
        graph = nx.Graph(read(path))
        for a, b, data in graph.edges(data=True):
            if latency_attribute not in data:
                raise ValueError(f"{path}: edge {a!r}-{b!r} has no {latency_attribute!r} attribute")
            data["latency"] = float(data[latency_attribute]) * scale
            if bandwidth_attribute in data:
                data["bandwidth"] = float(data[bandwidth_attribute]) * bandwidth_scale
        return cls(graph, name=Path(path).stem, backbone_bps=backbone_bps)


def _is_bandwidth(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _connected_by_distance(graph: nx.Graph, seconds_per_unit: float) -> nx.Graph:
    """Set latency from node positions and join stray components to their nearest neighbour."""
    positions = nx.get_node_attributes(graph, "pos")

    def distance(a: Node, b: Node) -> float:
        return math.dist(positions[a], positions[b])

    components = sorted(nx.connected_components(graph), key=lambda c: min(c))
    main = set(components[0])
    for component in components[1:]:
        a, b = min(((a, b) for a in sorted(component) for b in sorted(main)), key=lambda p: distance(*p))
        graph.add_edge(a, b)
        main |= component
    for a, b in graph.edges:
        graph.edges[a, b]["latency"] = distance(a, b) * seconds_per_unit
    return graph
