"""The simulated world: virtual time, network model, churn, scenarios, reports.

Runs the unmodified ``hivemind_core`` code of thousands of peers in one process, on an asyncio
event loop whose clock is a simpy ``Environment``.

The simulator is the ``[sim]`` extra (``pip install 'hivemind-sim[sim]'``). Its names load on
first use, so that ``hivemind-sim`` on a core-only install says what to install instead of
failing with a traceback at ``import hivemind_sim``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .world.loop import SimulationStuck, VirtualTimeLoop
    from .world.network import AccessLink, NetworkStats, SimNetwork
    from .world.simulation import Simulation
    from .world.tcp_model import TcpOptions
    from .world.topology import Topology
    from .world.trace import TraceDigest
    from .world.transport import SimTransport

_SUBMODULE = {
    "SimulationStuck": "world.loop",
    "VirtualTimeLoop": "world.loop",
    "AccessLink": "world.network",
    "NetworkStats": "world.network",
    "SimNetwork": "world.network",
    "Simulation": "world.simulation",
    "TcpOptions": "world.tcp_model",
    "Topology": "world.topology",
    "TraceDigest": "world.trace",
    "SimTransport": "world.transport",
}

__all__ = [
    "AccessLink",
    "NetworkStats",
    "SimNetwork",
    "SimTransport",
    "Simulation",
    "SimulationStuck",
    "TcpOptions",
    "Topology",
    "TraceDigest",
    "VirtualTimeLoop",
]


def __getattr__(name: str) -> Any:
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_SUBMODULE[name]}", __name__), name)
