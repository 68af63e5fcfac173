"""Topology builders give connected backbones with sensible, cached latencies."""

from __future__ import annotations

import math

import networkx as nx
import pytest

from hivemind_sim import Topology
from hivemind_sim.world.topology import WORLD_REGIONS_RTT_MS


def test_world_regions_use_half_the_rtt_and_route_through_shortcuts() -> None:
    topology = Topology.world_regions()
    assert len(topology.nodes) == 8
    assert topology.latency("eu-west", "eu-central") == pytest.approx(0.010)
    assert topology.latency("us-east", "us-east") == 0.0
    for (a, b), rtt in WORLD_REGIONS_RTT_MS.items():
        one_way = topology.latency(a, b)
        assert one_way == topology.latency(b, a)
        assert 0 < one_way <= rtt / 2000 + 1e-12  # a shorter detour may exist, never a longer path


@pytest.mark.parametrize(
    "build",
    [
        lambda: Topology.waxman(200, seed=3),
        lambda: Topology.random_geometric(200, radius=0.05, seed=3),
        lambda: Topology.barabasi_albert(200, m=2, seed=3),
    ],
    ids=["waxman", "geometric", "barabasi-albert"],
)
def test_random_builders_are_connected_and_reproducible(build) -> None:
    topology = build()
    assert nx.is_connected(topology.graph)
    nodes = topology.nodes
    sample = [(nodes[0], nodes[-1]), (nodes[5], nodes[100])]
    latencies = [topology.latency(a, b) for a, b in sample]
    assert all(0 < latency < math.inf for latency in latencies)
    assert latencies == [build().latency(a, b) for a, b in sample]


def test_graphml_round_trip(tmp_path) -> None:
    graph = nx.Graph()
    graph.add_edge("a", "b", rtt_ms=30.0)
    graph.add_edge("b", "c", rtt_ms=10.0)
    path = tmp_path / "net.graphml"
    nx.write_graphml(graph, path)
    topology = Topology.from_graphml(path, latency_attribute="rtt_ms", scale=0.0005)
    assert topology.latency("a", "c") == pytest.approx(0.020)
    assert topology.name == "net"


def test_disconnected_backbone_is_unreachable_not_an_error() -> None:
    graph = nx.Graph()
    graph.add_edge("a", "b", latency=0.01)
    graph.add_node("island")
    assert Topology(graph).latency("a", "island") == math.inf


def test_bad_topologies_are_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        Topology(nx.Graph())
    graph = nx.Graph()
    graph.add_edge("a", "b")
    with pytest.raises(ValueError, match="edge 'a'-'b' needs a finite 'latency'"):
        Topology(graph)
    with pytest.raises(ValueError, match="must be >= 0"):
        Topology.from_rtt_matrix({("a", "b"): -1})
