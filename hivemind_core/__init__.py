"""What a real peer runs: transports, RPC, DHT and experts.

Nothing in this package reads the wall clock, sleeps outside the running event loop, draws
from the global random module or opens sockets outside the TCP transport, so the very same
code runs on real machines and inside the virtual-time simulator (``hivemind_sim``).
"""

__version__ = "0.1.0"
