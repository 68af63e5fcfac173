"""Where a deployment's peers are and what each hosts, decided as the simulator decides it.

The simulator's own ``ScenarioPeers`` places the peers (regions, access links, NAT) and shares
out the grid from the scenario's seed; a deployment of the same scenario and seed reads both
from it, so the real peer ``servers-3`` hosts the experts and sits in the region that the
simulated ``servers-3`` does. The one-way delay between two peers is the simulator's
propagation latency: both access links' latency plus the backbone's between their regions.
"""

from __future__ import annotations

import collections
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from ..scenario.format import schema
from ..scenario.results.metrics import Recorder
from ..scenario.run.failures import PeerFailures
from ..scenario.run.peers import Placement, ScenarioPeers, build_topology
from ..swarms.baton import Baton
from ..world.simulation import Simulation


class _Hosts(Protocol):
    name: str

    def host(self, peer: str) -> str: ...


@dataclass(frozen=True)
class Layout:
    names: list[str]
    """Every peer, in the scenario's order."""
    groups: dict[str, list[str]]
    """Peer names per group."""
    placements: dict[str, Placement]
    hosted: dict[str, list[str]]
    """Grid expert UIDs per hosting peer."""
    hosts: dict[str, str]
    """The address each peer listens on."""
    ports: dict[str, int]
    """The port each peer listens on (kept across its restarts)."""
    latency: dict[tuple[str, str], float]
    """One-way propagation delay in seconds, per ordered pair of distinct peers."""

    def endpoint(self, name: str) -> str:
        return f"{self.hosts[name]}:{self.ports[name]}"

    def delays_from(self, name: str) -> dict[str, Any]:
        """``name``'s delays to every other peer, as ``--emulate-delays`` reads them: by endpoint
        (loopback: all peers share one host) and by host (namespaces: one address each)."""
        others = [other for other in self.names if other != name]
        endpoints = {self.endpoint(other): self.latency[name, other] for other in others}
        hosts: dict[str, float] = {}
        for other in others:
            if self.hosts[other] != self.hosts[name]:
                hosts[self.hosts[other]] = self.latency[name, other]
        return {"default": 0.0, "endpoints": endpoints, "hosts": hosts}


def plan_layout(scenario: schema.Scenario, network: _Hosts) -> Layout:
    """Place ``scenario``'s peers as its simulation would, on ``network``'s addresses."""
    topology = build_topology(scenario.topology, seed=scenario.seed)
    with Simulation(seed=scenario.seed, topology=topology) as sim:
        recorder = Recorder(scenario.sample_interval)
        peers = ScenarioPeers(
            scenario,
            sim,
            recorder=recorder,
            failures=PeerFailures(recorder, lambda: 0.0),
            baton=Baton(),
            dataset=None,
            clock=lambda: 0.0,
        )
        placements, hosted = dict(peers.placements), dict(peers.hosted)
    names = list(placements)
    latency = {
        (a, b): placements[a].link.latency + topology.latency(placements[a].region, placements[b].region)
        + placements[b].link.latency
        for a in names
        for b in names
        if a != b
    }  # fmt: skip
    hosts = {name: network.host(name) for name in names}
    return Layout(
        names=names,
        groups={group.group: group.peer_names() for group in scenario.peers},
        placements=placements,
        hosted=hosted,
        hosts=hosts,
        ports=_ports(hosts),
        latency=latency,
    )


def _ports(hosts: dict[str, str]) -> dict[str, int]:
    """A port per peer: on a shared host, free ones the kernel hands out (held open together so
    that no two peers get the same); on a host of its own, one fixed port."""
    sharing = collections.Counter(hosts.values())
    shared = [name for name in hosts if sharing[hosts[name]] > 1]
    ports = {name: 7000 for name in hosts if name not in shared}
    sockets = []
    try:
        for name in shared:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((hosts[name], 0))
            sockets.append(sock)
            ports[name] = sock.getsockname()[1]
    finally:
        for sock in sockets:
            sock.close()
    return ports
