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


def test_a_path_bottleneck_is_its_slowest_edge_in_the_direction_of_travel() -> None:
    graph = nx.Graph()
    graph.add_edge("a", "m", latency=0.010, bandwidth=100e6)
    graph.add_edge("m", "b", latency=0.020, bandwidth=10e6)
    graph.add_edge("b", "c", latency=0.005)
    topology = Topology(graph)
    assert topology.limited
    there = topology.bottleneck("a", "c")
    assert there is not None
    assert (there.edge, there.bytes_per_s, there.offset) == (("m", "b"), 10e6 / 8, pytest.approx(0.010))
    back = topology.bottleneck("c", "a")
    assert back is not None
    assert (back.edge, back.offset) == (("b", "m"), pytest.approx(0.005))
    assert topology.bottleneck("b", "c") is None  # unlimited edge
    assert topology.bottleneck("a", "a") is None


def test_backbone_bandwidth_applies_to_edges_without_their_own() -> None:
    world = Topology.world_regions()
    assert not world.limited and world.bottleneck("us-east", "oceania") is None
    limited = world.with_backbone_bandwidth(10e9)
    assert limited.limited and limited.name == world.name
    assert limited.bandwidth("us-east", "eu-west") == 10e9
    neck = limited.bottleneck("us-east", "eu-west")
    assert neck is not None and neck.bytes_per_s == 10e9 / 8
    assert not world.limited, "the original is unchanged"
    graph = nx.Graph()
    graph.add_edge("a", "b", latency=0.01, bandwidth=1e6)
    graph.add_edge("b", "c", latency=0.01)
    mixed = Topology(graph, backbone_bps=5e6)
    assert (mixed.bandwidth("a", "b"), mixed.bandwidth("b", "c")) == (1e6, 5e6)


def test_graphml_edges_may_carry_bandwidth(tmp_path) -> None:
    graph = nx.Graph()
    graph.add_edge("a", "b", rtt_ms=30.0, mbps=100.0)
    graph.add_edge("b", "c", rtt_ms=10.0)
    path = tmp_path / "net.graphml"
    nx.write_graphml(graph, path)
    topology = Topology.from_graphml(
        path, latency_attribute="rtt_ms", scale=0.0005, bandwidth_attribute="mbps", bandwidth_scale=1e6
    )
    assert topology.bandwidth("a", "b") == 100e6 and topology.bandwidth("b", "c") == math.inf
    plain = Topology.from_graphml(path, latency_attribute="rtt_ms", scale=0.0005, backbone_bps=1e9)
    assert plain.bandwidth("a", "b") == 1e9


def test_bad_bandwidths_are_rejected_with_the_reason() -> None:
    graph = nx.Graph()
    graph.add_edge("a", "b", latency=0.01, bandwidth=0)
    with pytest.raises(ValueError, match="edge 'a'-'b': 'bandwidth' must be bits/s > 0, got 0"):
        Topology(graph)
    with pytest.raises(ValueError, match="backbone bandwidth must be a number of bits/s > 0, got -1"):
        Topology.single().with_backbone_bandwidth(-1)
