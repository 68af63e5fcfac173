"""The simulated world: virtual time, network model, churn, scenarios, reports.

Runs the unmodified ``hivemind_core`` code of thousands of peers in one process, on an asyncio
event loop whose clock is a simpy ``Environment``.
"""

from .loop import SimulationStuck, VirtualTimeLoop
from .network import AccessLink, NetworkStats, SimNetwork
from .simulation import Simulation
from .topology import Topology
from .trace import TraceDigest
from .transport import SimTransport

__all__ = [
    "AccessLink",
    "NetworkStats",
    "SimNetwork",
    "SimTransport",
    "Simulation",
    "SimulationStuck",
    "Topology",
    "TraceDigest",
    "VirtualTimeLoop",
]
