"""Hostile peers over real TCP: each abuses one limit while a well-behaved client keeps working.

The attackers' sockets come from 127.0.0.2 and the good client's from 127.0.0.1 (all of
127.0.0.0/8 is loopback on Linux), so per-host limits and turns tell them apart. Limits are
set small so each case runs in about a second; benchmarks/hostile_tcp.py measures the same
cases at the default limits against a peer in its own process.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from good_client import GoodClient

from hivemind_core.net import RPC, DropReason, TcpConfig, TcpTransport, parse_endpoint
from hivemind_core.net.frames import PREFIX, FrameKind, encode_frame
from hivemind_core.net.rpc import pack

pytestmark = pytest.mark.asyncio(loop_factories=["tcp"])

ATTACKER_HOST = "127.0.0.2"


def request_frame(method: str, body: Any, request_id: int = 1) -> bytes:
    return encode_frame(FrameKind.REQUEST, request_id, pack((method, body)))


class RawConnection(asyncio.Protocol):
    """An attacker's connection: writes what it is told, and reads only if told to."""

    def __init__(self, *, read: bool) -> None:
        self.read = read
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.read:
            transport.pause_reading()
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def pipeline(self, method: str, body: Any) -> None:
        """Send requests, as fast as the server takes them, until it hangs up."""
        payload = pack((method, body))
        per_write = max(1, 4096 // len(payload))
        request_id = 0
        while not self.closed.done():
            await self._writable.wait()
            frames = [encode_frame(FrameKind.REQUEST, request_id + i, payload) for i in range(per_write)]
            request_id += per_write
            self.write(b"".join(frames))
            await asyncio.sleep(0)  # a write that does not fill the buffer must not hog the loop

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect_raw(endpoint: str, *, read: bool, receive_buffer: int | None = None) -> RawConnection:
    """A raw connection from ATTACKER_HOST (a small ``receive_buffer`` makes unread data back up)."""
    host, port = parse_endpoint(endpoint)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((ATTACKER_HOST, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    _, connection = await loop.create_connection(lambda: RawConnection(read=read), sock=sock)
    return connection


async def serving(**limits: Any) -> RPC:
    async def echo(_peer: str, body: Any) -> Any:
        return body

    async def blob(_peer: str, size: int) -> bytes:
        return bytes(size)

    rpc = RPC(TcpTransport(TcpConfig(**limits)))
    rpc.register("echo", echo)
    rpc.register("blob", blob)
    await rpc.serve()
    return rpc


async def test_trickling_connections_neither_fill_the_slots_nor_keep_them() -> None:
    server = await serving(
        max_incoming=24, max_incoming_per_host=8, transfer_timeout=0.5, min_transfer_rate=1000
    )
    assert server.endpoint is not None
    good = GoodClient(server.endpoint, new_peer_each_call=True)
    attackers: list[RawConnection] = []
    try:
        await good.served_again()
        attackers = [await connect_raw(server.endpoint, read=False) for _ in range(40)]

        async def trickle(connection: RawConnection) -> None:
            for byte in PREFIX.pack(1 << 20) + bytes(1000):  # claims a 1 MiB frame, sends 20 bytes/s
                if connection.closed.done():
                    return
                connection.write(bytes([byte]))
                await asyncio.sleep(0.05)  # pacing: this is what a trickle is

        trickles = [asyncio.ensure_future(trickle(a)) for a in attackers]
        await good.served_again()  # a new peer joins while the slots would be full
        await good.served_again()
        await asyncio.wait_for(asyncio.gather(*(a.closed for a in attackers)), timeout=10)
        await asyncio.gather(*trickles)
        await good.served_again()
        dropped = server.transport.stats.dropped
        assert dropped.get(DropReason.HOST_LIMIT) == 32, dropped
        assert dropped.get(DropReason.SLOW_FRAME) == 8, dropped
    finally:
        for attacker in attackers:
            attacker.abort()
        await good.stop()
        await server.transport.close()


async def test_a_new_connection_that_sends_nothing_is_closed_before_the_idle_timeout(caplog) -> None:
    server = await serving(transfer_timeout=0.3, idle_timeout=60)
    assert server.endpoint is not None
    try:
        silent = await connect_raw(server.endpoint, read=True)
        await asyncio.wait_for(silent.closed, timeout=5)
        assert server.transport.stats.dropped == {DropReason.SLOW_FRAME: 1}
        assert "sent nothing in" in caplog.text
    finally:
        await server.transport.close()


async def test_per_host_cap_can_be_disabled() -> None:
    server = await serving(max_incoming_per_host=None, max_incoming=64)
    assert server.endpoint is not None
    connections = [await connect_raw(server.endpoint, read=True) for _ in range(40)]
    try:
        for connection in connections:
            connection.write(request_frame("echo", "hi"))
        async with asyncio.timeout(5):
            while not all(c.received for c in connections):  # each answered: none was refused
                await asyncio.sleep(0.01)
        assert server.transport.stats.incoming == 40
    finally:
        for connection in connections:
            connection.abort()
        await server.transport.close()


@pytest.mark.parametrize(
    ("method", "body"),
    [("blob", 64 * 1024), ("echo", bytes(200))],
    ids=["large replies (amplification)", "small replies (half-open flood)"],
)
async def test_a_peer_that_does_not_read_its_replies_stops_being_served(method, body, caplog) -> None:
    caplog.set_level(logging.INFO, logger="hivemind_core.net.tcp")
    server = await serving(
        max_connection_backlog=128 * 1024,
        max_total_backlog=256 * 1024,
        transfer_timeout=0.5,
        min_transfer_rate=64 * 1024,
    )
    assert server.endpoint is not None
    good = GoodClient(server.endpoint, method=method, body=body)
    attackers: list[RawConnection] = []
    try:
        await good.served_again()
        attackers = [await connect_raw(server.endpoint, read=False, receive_buffer=4096) for _ in range(4)]
        floods = [asyncio.ensure_future(a.pipeline(method, body)) for a in attackers]
        await good.served_again()
        await asyncio.wait_for(asyncio.gather(*floods), timeout=30)  # until the server hung up
        await good.served_again()
        stats = server.transport.stats
        assert stats.dropped == {DropReason.STALLED_READER: 4}
        # each connection holds at most its limit plus one reply; without limits, 256 replies each
        assert stats.peak_queued_bytes < 4 * (128 + 64 + 4) * 1024 + 256 * 1024, stats
        assert "limiting every connection to 16384 bytes" in caplog.text
        assert "connections may queue 131072 bytes again" in caplog.text  # once the attackers are gone
    finally:
        for attacker in attackers:
            attacker.abort()
        await good.stop()
        await server.transport.close()


async def test_a_greedy_host_gets_turns_like_everyone_else() -> None:
    """While one host pipelines requests on 8 connections, another's waits only a few turns."""
    greedy_served = 0
    flooding = asyncio.Event()

    async def count(peer: str, _body: Any) -> int:
        nonlocal greedy_served
        if peer.startswith(ATTACKER_HOST):
            greedy_served += 1
            if greedy_served == 2000:
                flooding.set()
        return greedy_served

    async def served_ahead(_peer: str, seen_at_send: int) -> int:
        return greedy_served - seen_at_send

    server = RPC(TcpTransport())
    server.register("count", count)
    server.register("served_ahead", served_ahead)
    await server.serve()
    assert server.endpoint is not None
    client = RPC(TcpTransport())
    attackers = [await connect_raw(server.endpoint, read=True) for _ in range(8)]
    floods = [asyncio.ensure_future(a.pipeline("count", None)) for a in attackers]
    try:
        await asyncio.wait_for(flooding.wait(), timeout=10)
        await client.call(server.endpoint, "served_ahead", greedy_served, timeout=5)  # connected
        ahead = [
            await client.call(server.endpoint, "served_ahead", greedy_served, timeout=5) for _ in range(20)
        ]
        assert min(ahead) > 0, "the greedy host was not being served while the client called"
        # a round or two of 64 frames; first come, first served put 8,000 ahead of it
        assert max(ahead) < 1000, ahead
    finally:
        for attacker in attackers:
            attacker.abort()
        await asyncio.gather(*floods)
        await client.transport.close()
        await server.transport.close()


async def test_outgoing_connections_come_from_the_host_a_peer_listens_on() -> None:
    async def whoami(peer: str, _body: Any) -> str:
        return peer

    server = RPC(TcpTransport(TcpConfig(host="127.0.0.1")))
    server.register("whoami", whoami)
    await server.serve()
    assert server.endpoint is not None
    peer = RPC(TcpTransport(TcpConfig(host="127.0.0.3")))
    await peer.serve()
    try:
        assert parse_endpoint(await peer.call(server.endpoint, "whoami"))[0] == "127.0.0.3"
    finally:
        await peer.transport.close()
        await server.transport.close()


async def test_a_peer_listening_on_ipv6_loopback_still_reaches_ipv4_peers() -> None:
    async def whoami(peer: str, _body: Any) -> str:
        return peer

    server = RPC(TcpTransport(TcpConfig(host="127.0.0.1")))
    server.register("whoami", whoami)
    await server.serve()
    assert server.endpoint is not None
    peer = RPC(TcpTransport(TcpConfig(host="::1")))
    try:
        await peer.serve()
    except OSError as error:
        await server.transport.close()
        pytest.skip(f"cannot bind [::1]: {error}")
    try:
        assert parse_endpoint(await peer.call(server.endpoint, "whoami"))[0] == "127.0.0.1"
    finally:
        await peer.transport.close()
        await server.transport.close()


async def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match=r"TcpConfig\.max_incoming_per_host must be at least 1 or None"):
        TcpConfig(max_incoming_per_host=0)
    with pytest.raises(ValueError, match="max_connection_backlog"):
        TcpConfig(max_connection_backlog=2048, max_total_backlog=1024)
    with pytest.raises(ValueError, match=r"TcpConfig\.min_transfer_rate must be positive"):
        TcpConfig(min_transfer_rate=0)
    with pytest.raises(ValueError, match=r"TcpConfig\.max_frame_size must exceed the 13-byte header"):
        TcpConfig(max_frame_size=13)
    with pytest.raises(ValueError, match=r"TcpConfig\.port must be 0\.\.65535"):
        TcpConfig(port=70000)
