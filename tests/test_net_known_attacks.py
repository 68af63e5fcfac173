"""Known attacks on the transports (issue 14): each test failed before its fix.

* endpoints: one canonical spelling, and no unroutable address from a remote peer;
* protocol violations: the simulated transport does what TCP does (drops the offender's
  connection), so a hostile peer's effect in simulation carries over to TCP;
* closing: a cancelled close leaks nothing, a second close waits for the first, a crashed
  sweeper is restarted, and a connection accepted while closing is closed before close returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
from collections.abc import Callable

import pytest

from hivemind_core.net import (
    PeerUnavailable,
    ProtocolError,
    TcpTransport,
    Transport,
    canonical_endpoint,
    is_canonical_endpoint,
    parse_endpoint,
)
from hivemind_core.net.frames import FrameKind, encode_frame
from hivemind_sim import SimTransport

# ---- endpoints ------------------------------------------------------------------------------

CANONICAL = ["127.0.0.1:8080", "[::1]:31337", "localhost:1", "peer-7.example:65535", "[2001:db8::1]:80"]

NOT_CANONICAL = [
    "1.2.3.4:0080",  # leading zeros in the port
    "1.2.3.4:\u0668\u0660",  # Arabic-Indic digits
    "\u0661.2.3.4:80",  # a non-ASCII digit in the host
    "::1:80",  # unbracketed IPv6
    "[0::1]:80",  # IPv6 not in its compressed form
    "[::FFFF:7f00:1]:80",  # upper case, and IPv4-mapped
    "[::ffff:127.0.0.1]:80",  # IPv4-mapped: the same listener as 127.0.0.1:80
    "01.2.3.4:80",  # leading zero in the address
    "1.2.3:80",  # not a dotted quad
    "Localhost:80",  # names are lower-case
    "a..b:80",
    "-a:80",
    "123:80",  # an all-numeric "name"
    "[fe80::1%eth0]:80",  # a zone
    "[1.2.3.4]:80",
    "host:+80",
    "host:80 ",
    "host:0",
    "host:65536",
    "",
    "host",
    ":80",
]


@pytest.mark.parametrize("endpoint", CANONICAL)
def test_canonical_endpoints_are_accepted(endpoint: str) -> None:
    assert is_canonical_endpoint(endpoint)
    assert canonical_endpoint(endpoint) == endpoint
    host, port = parse_endpoint(endpoint)
    assert endpoint in (f"{host}:{port}", f"[{host}]:{port}")


@pytest.mark.parametrize("endpoint", NOT_CANONICAL)
def test_other_spellings_are_refused(endpoint: str) -> None:
    assert not is_canonical_endpoint(endpoint)
    with pytest.raises(ValueError, match="invalid endpoint"):
        parse_endpoint(endpoint)
    with pytest.raises(ValueError, match="invalid endpoint"):
        TcpTransport().check_endpoint(endpoint)


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("0.0.0.0:80", "unspecified"),
        ("[::]:80", "unspecified"),
        ("224.0.0.1:80", "multicast"),
        ("[ff02::1]:80", "multicast"),
        ("255.255.255.255:80", "broadcast"),
        ("169.254.1.1:80", "link-local"),
        ("[fe80::1]:80", "link-local"),
        ("240.0.0.1:80", "reserved"),
        ("0.1.2.3:80", "0.0.0.0/8"),
        ("localhost:80", "not a name"),
    ],
)
def test_remote_peers_may_not_announce_unroutable_addresses(endpoint: str, problem: str) -> None:
    parse_endpoint(endpoint)  # canonical, so an operator may still type it
    with pytest.raises(ValueError, match=problem):
        TcpTransport().check_endpoint(endpoint)


@pytest.mark.parametrize("endpoint", ["127.0.0.1:1", "127.0.0.2:5", "[::1]:5", "10.1.2.3:4", "8.8.8.8:53"])
def test_remote_peers_may_announce_loopback_private_and_public_addresses(endpoint: str) -> None:
    TcpTransport().check_endpoint(endpoint)


# ---- protocol violations: the same outcome over TCP and in simulation -----------------------


class Victim:
    """A handler with a request that never finishes, one the client may not send, and an echo."""

    def __init__(self) -> None:
        self.stalled = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, _peer: str, payload: bytes) -> bytes:
        if payload == b"stall":
            self.stalled.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if payload == b"refused":
            raise ProtocolError("a body this peer cannot decode")
        return payload


def inject(client: Transport, server_endpoint: str, frame: bytes) -> None:
    """Put raw bytes on the client's connection to the server, as a hostile peer would."""
    if isinstance(client, SimTransport):
        client.network.send(client.address, server_endpoint, frame)
    else:
        assert isinstance(client, TcpTransport)
        connection = client._outgoing[server_endpoint]
        assert connection.transport is not None
        connection.transport.write(frame)


def _pending_id(client: Transport) -> int:
    assert isinstance(client, SimTransport | TcpTransport)
    (request_id,) = client._pending
    return request_id


VIOLATIONS: dict[str, Callable[[Transport, str], None]] = {
    "unknown_kind": lambda client, server: inject(client, server, encode_frame(9, 1, b"")),  # type: ignore[arg-type]
    "duplicate_request_id": lambda client, server: inject(
        client, server, encode_frame(FrameKind.REQUEST, _pending_id(client), b"again")
    ),
    "short_frame": lambda client, server: inject(client, server, b"\x00\x00\x00\x03abc"),
    "oversized_frame": lambda client, server: inject(
        client, server, encode_frame(FrameKind.REQUEST, 10**6, bytes(8192))
    ),
    "refused_body": None,  # type: ignore[dict-item]  # sent as an ordinary request, below
}


@pytest.mark.asyncio
@pytest.mark.parametrize("violation", list(VIOLATIONS))
async def test_a_protocol_violation_drops_the_offenders_connection_in_both_worlds(
    world, violation: str
) -> None:
    """The offender's requests fail with PeerUnavailable and what it asked for is cancelled; the
    victim's own requests to it go on (another connection), and both keep serving."""
    victim = Victim()
    server = world.transport(max_frame_size=4096)
    server_endpoint = await server.listen(victim)
    offender_victim = Victim()
    client = world.transport()
    await client.listen(offender_victim)

    stalled = asyncio.ensure_future(client.request(server_endpoint, b"stall", timeout=60))
    await victim.stalled.wait()
    victims_own = asyncio.ensure_future(server.request(client.endpoint, b"stall", timeout=60))
    await offender_victim.stalled.wait()

    inject_violation = VIOLATIONS[violation]
    if inject_violation is None:
        with pytest.raises(PeerUnavailable):
            await client.request(server_endpoint, b"refused", timeout=30)
    else:
        inject_violation(client, server_endpoint)
    with pytest.raises(PeerUnavailable):
        await stalled
    await asyncio.wait_for(victim.cancelled.wait(), timeout=30)

    assert not victims_own.done() and not offender_victim.cancelled.is_set(), "the victim's own request"
    assert await client.request(server_endpoint, b"echo", timeout=30) == b"echo", "the victim serves on"
    assert await server.request(client.endpoint, b"echo", timeout=30) == b"echo"
    victims_own.cancel()
    await asyncio.wait_for(offender_victim.cancelled.wait(), timeout=30)


# ---- closing ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_cancelled_close_still_closes_and_a_second_close_waits_for_it(world) -> None:
    victim = Victim()
    server = world.transport()
    server_endpoint = await server.listen(victim)
    client = world.transport()
    stalled = asyncio.ensure_future(client.request(server_endpoint, b"stall", timeout=3600))
    await victim.stalled.wait()

    closing = asyncio.ensure_future(server.close(grace=3600))
    with pytest.raises(Exception, match="shutting down"):  # the close has begun: it waits out the grace
        await client.request(server_endpoint, b"echo", timeout=30)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert victim.cancelled.is_set(), "the request in service was cancelled, not left to its grace"
    with pytest.raises(PeerUnavailable):
        await stalled
    await server.close()  # returns at once: the cancelled call finished the work
    if isinstance(server, TcpTransport):
        assert server.connection_count == 0 and not server._sockets


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_a_second_close_waits_until_the_first_has_closed_every_connection(world) -> None:
    victim = Victim()
    server = world.transport()
    server_endpoint = await server.listen(victim)
    client = world.transport()
    stalled = asyncio.ensure_future(client.request(server_endpoint, b"stall", timeout=3600))
    await victim.stalled.wait()
    first = asyncio.ensure_future(server.close(grace=0.5))
    second = asyncio.ensure_future(server.close(grace=0))
    await second
    assert first.done() and server.connection_count == 0
    with pytest.raises(PeerUnavailable):
        await stalled


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_the_sweeper_survives_an_error_and_keeps_closing_idle_connections(world, monkeypatch) -> None:
    from hivemind_core.net.tcp.connection import Connection

    original = Connection.check_deadlines
    failed = asyncio.Event()

    def fails_once(self: Connection, now: float) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("an unforeseen error while sweeping")
        original(self, now)

    monkeypatch.setattr(Connection, "check_deadlines", fails_once)
    server = world.transport(idle_timeout=0.2)
    server_endpoint = await server.listen(Victim())
    first = world.transport()
    assert await first.request(server_endpoint, b"x", timeout=30) == b"x"
    await failed.wait()
    later = world.transport(idle_timeout=3600)  # never closes on its own: the server must
    assert await later.request(server_endpoint, b"y", timeout=30) == b"y"
    # generous: the server closes an idle incoming connection after 0.4 s, swept every 0.05 s
    await asyncio.wait_for(later._outgoing[server_endpoint].lost, timeout=30)


def open_sockets() -> int:
    """How many sockets this process holds open (Linux: /proc)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="counts sockets through Linux's /proc")
@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_no_connection_accepted_while_closing_outlives_the_close(world) -> None:
    """Clients connect and hang up, over and over, while the server closes: by the time close()
    returns, no socket the server accepted is open (asyncio's own setup of a connection accepted
    just before the server closed used to fail, leaking its socket)."""
    before = open_sockets()
    server = world.transport()
    host, port = parse_endpoint(await server.listen(Victim()))
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    flooding = asyncio.Event()

    def connect_forever() -> None:
        while not stop.is_set():
            try:
                client = socket.create_connection((host, port), timeout=5)
            except OSError:
                return  # the listener is gone
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset: the server's side dies on its own, so few stay open
            loop.call_soon_threadsafe(flooding.set)

    threads = [threading.Thread(target=connect_forever, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        await flooding.wait()
        await server.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert open_sockets() == before


# ---- a peer that never reads its replies ------------------------------------------------------


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_a_peer_that_never_reads_gets_little_computed_for_it(world) -> None:
    """Replies wait in the kernel too: before its cap, Linux took ~4 MiB of them (~190,000 small
    replies computed over 20 s of the loop) before the connection's backlog began to count."""
    served = 0

    async def answer(_peer: str, _payload: bytes) -> bytes:
        nonlocal served
        served += 1
        return b""  # a 13-byte reply frame

    server = world.transport()
    host, port = parse_endpoint(await server.listen(answer))
    loop = asyncio.get_running_loop()
    attacker = socket.socket()
    attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    attacker.bind(("127.0.0.2", 0))
    attacker.setblocking(False)
    batch = b"".join(encode_frame(FrameKind.REQUEST, i, b"") for i in range(1000))

    async def pipeline() -> None:
        while True:
            await loop.sock_sendall(attacker, batch)

    try:
        await loop.sock_connect(attacker, (host, port))
        flood = asyncio.ensure_future(pipeline())
        async with asyncio.timeout(120):  # until the server stops answering it (its backlog is full)
            while not any(c.write_paused for c in server._incoming):
                await asyncio.sleep(0.01)
        flood.cancel()
        # the kernel's unsent cap and asyncio's backlog (64 KiB each), what is in flight, and slack
        assert served * 13 < 256 * 1024, served
    finally:
        attacker.close()
