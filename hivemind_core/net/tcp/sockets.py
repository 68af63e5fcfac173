"""The sockets under the TCP transport: listening, dialling, name resolution, kernel options.

This module and the real compute executor are the only places in ``hivemind_core`` allowed to
touch sockets (``tests/test_identical_code_rule.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import socket
from collections.abc import Callable
from typing import TypeVar

from ..endpoints import format_endpoint, ip_of, parse_endpoint
from ..transport import Endpoint

P = TypeVar("P", bound=asyncio.Protocol)

# Unsent bytes the kernel may hold for a connection. Without a cap, Linux grows a socket's send
# buffer up to tcp_wmem's maximum (4 MiB): a peer that never reads got ~190,000 small replies
# computed for it, over 20 s of the loop, before its backlog even began to count. Bytes in flight
# are not capped, so throughput does not suffer.
KERNEL_UNSENT_LIMIT = 64 * 1024


def resolve_endpoint(endpoint: Endpoint) -> Endpoint:
    """An operator's ``name:port`` as the canonical endpoint of its first address (blocking).

    Peers accept only IP addresses from one another (``check_remote_endpoint``), so a name
    typed on a command line is looked up once, where it is typed.
    """
    host, port = parse_endpoint(endpoint)
    if ip_of(host) is not None:
        return endpoint
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ValueError(f"cannot resolve {host!r}: {error.strerror or error}") from None
    return format_endpoint(str(infos[0][4][0]), port)


async def listen(
    factory: Callable[[], asyncio.Protocol], host: str, port: int, *, backlog: int
) -> asyncio.Server:
    """A server accepting connections on ``host:port``, each served by a protocol from ``factory``."""
    return await asyncio.get_running_loop().create_server(factory, host, port, backlog=backlog)


async def dial(factory: Callable[[], P], host: str, port: int, *, source: str | None) -> P:
    """A connection to ``host:port`` from the address ``source`` (any, when None)."""
    loop = asyncio.get_running_loop()
    if source is None:
        _, protocol = await loop.create_connection(factory, host, port)
        return protocol
    sock = socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET, socket.SOCK_STREAM)
    try:
        # pick the port at connect time, so ports are shared across destinations (Linux)
        if hasattr(socket, "IP_BIND_ADDRESS_NO_PORT"):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        error = sock.connect_ex((host, port))
        if error and not (error == errno.EINPROGRESS and _established(sock)):
            if error != errno.EINPROGRESS:
                raise OSError(error, os.strerror(error))
            await loop.sock_connect(sock, (host, port))  # waits for the handshake, reports its failure
        _, protocol = await loop.create_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return protocol


def _established(sock: socket.socket) -> bool:
    """Whether a connect in progress has completed already: over loopback the handshake is done
    by the time ``connect`` returns, and not waiting for the socket to turn writable saves a
    turn of the loop (and two epoll changes) per dial."""
    try:
        sock.getpeername()  # ENOTCONN until the handshake completes
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def source_address(local_host: str, remote_host: str) -> str | None:
    """The address to dial ``remote_host`` from, for a peer listening on ``local_host``.

    ``local_host`` itself when it is one specific address of the same family and scope
    (loopback or not) as the remote one, so peers see requests come from the host this one
    announces; otherwise ``None``: the operating system picks.
    """
    local, remote = ip_of(local_host), ip_of(remote_host)
    if local is None or remote is None or local.is_unspecified or local.version != remote.version:
        return None
    return local_host if local.is_loopback == remote.is_loopback else None


def limit_unsent(transport: asyncio.BaseTransport) -> None:
    """Cap what the kernel holds unsent for this connection (``KERNEL_UNSENT_LIMIT``)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_NOTSENT_LOWAT"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, KERNEL_UNSENT_LIMIT)
