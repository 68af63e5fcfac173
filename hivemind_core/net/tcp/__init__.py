"""The TCP transport: frames over real TCP sockets with asyncio, in modules of one idea each.

* ``transport``: :class:`TcpTransport`, the ``FramedTransport`` over TCP (listening,
  admitting connections, dropping offenders, closing);
* ``config``: :class:`TcpConfig`, its settings and limits;
* ``connection``: one connection, its byte stream cut into frames, flow control, deadlines;
* ``fairness``: remote hosts take turns at handing requests over;
* ``backlog``: bytes queued for peers that do not read, per connection and in total;
* ``pool``: outgoing connections, dialled on demand, within ``max_outgoing``;
* ``sockets``: the only module here that touches sockets;
* ``stats``: what a transport reports about itself.
"""

from .config import TcpConfig
from .sockets import resolve_endpoint
from .stats import DropReason, TcpStats
from .transport import TcpTransport

__all__ = ["DropReason", "TcpConfig", "TcpStats", "TcpTransport", "resolve_endpoint"]
