"""What only the TCP transport has: connections, pools, flow control, addresses."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import pytest

from hivemind_core.net import RPC, PeerUnavailable, RequestTimeout, TcpConfig, TcpTransport
from hivemind_core.net.frames import HEADER, HEADER_SIZE, KIND_AND_ID, FrameKind, encode_frame
from hivemind_core.net.rpc import pack

pytestmark = pytest.mark.asyncio(loop_factories=["tcp"])


async def echo(_peer: str, body: Any) -> Any:
    return body


async def serving(**options: Any) -> RPC:
    rpc = RPC(TcpTransport(TcpConfig(**options)))
    rpc.register("echo", echo)
    await rpc.serve()
    return rpc


async def test_concurrent_requests_share_one_connection() -> None:
    server = await serving()
    client = RPC(TcpTransport())
    try:
        await asyncio.gather(*(client.call(server.endpoint, "echo", i) for i in range(100)))
        assert client.transport.connection_count == 1
        assert server.transport.connection_count == 1
    finally:
        await client.transport.close()
        await server.transport.close()


async def test_idle_connections_are_closed_and_reopened_on_demand() -> None:
    server = await serving(idle_timeout=0.4)
    client = RPC(TcpTransport(TcpConfig(idle_timeout=0.2)))
    try:
        assert await client.call(server.endpoint, "echo", 1) == 1
        assert client.transport.connection_count == 1
        async with asyncio.timeout(5):
            while client.transport.connection_count or server.transport.connection_count:
                await asyncio.sleep(0.05)
        assert await client.call(server.endpoint, "echo", 2) == 2
    finally:
        await client.transport.close()
        await server.transport.close()


async def test_outgoing_pool_stays_within_its_limit() -> None:
    servers = [await serving() for _ in range(4)]
    client = RPC(TcpTransport(TcpConfig(max_outgoing=2)))
    try:
        for round_ in range(3):
            for server in servers:
                assert await client.call(server.endpoint, "echo", round_) == round_
                assert client.transport.connection_count <= 2
    finally:
        await client.transport.close()
        for server in servers:
            await server.transport.close()


async def test_concurrent_dials_beyond_the_pool_do_not_evict_each_other() -> None:
    """Many tasks calling more peers than the outgoing pool holds (as lookups do): a connection
    fresh from a dial stays until its requesters have sent on it, and dials still waiting for a
    slot do not count as holding one. Before, new connections evicted each other over and over
    until requests timed out (and 12 dials queued for 3 free slots waited forever)."""
    servers = [await serving() for _ in range(40)]
    client = RPC(TcpTransport(TcpConfig(max_outgoing=8)))
    transport = client.transport
    assert isinstance(transport, TcpTransport)
    dials = 0
    pool = transport._pool
    dial = pool._dial

    async def counted_dial(*args: Any) -> Any:
        nonlocal dials
        dials += 1
        return await dial(*args)

    pool._dial = counted_dial  # type: ignore[method-assign]
    rng = random.Random(0)

    async def lookup_like(calls: int) -> list[int]:
        return [await client.call(rng.choice(servers).endpoint, "echo", i, timeout=10) for i in range(calls)]

    try:
        assert await asyncio.gather(*(lookup_like(10) for _ in range(100))) == [list(range(10))] * 100
        assert dials <= 1000, f"{dials} dials for 1000 requests"
        assert transport.connection_count <= 8
    finally:
        await client.transport.close()
        for server in servers:
            await server.transport.close()


async def test_backpressure_caps_requests_in_service_per_connection() -> None:
    active = peak = 0

    async def slow(_peer: str, body: Any) -> Any:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return body

    server = RPC(TcpTransport(TcpConfig(max_concurrent_requests=4)))
    server.register("slow", slow)
    await server.serve()
    client = RPC(TcpTransport())
    try:
        results = await asyncio.gather(*(client.call(server.endpoint, "slow", i) for i in range(40)))
        assert results == list(range(40))
        # reading pauses at the limit; frames already read in the same chunk are still served
        assert 4 <= peak < 40
    finally:
        await client.transport.close()
        await server.transport.close()


async def test_graceful_close_lets_requests_in_service_finish() -> None:
    started = asyncio.Event()

    async def slow(_peer: str, body: Any) -> Any:
        started.set()
        await asyncio.sleep(0.1)
        return body

    server = RPC(TcpTransport())
    server.register("slow", slow)
    await server.serve()
    client = RPC(TcpTransport())
    try:
        call = asyncio.ensure_future(client.call(server.endpoint, "slow", "done"))
        await asyncio.wait_for(started.wait(), timeout=5)
        await server.transport.close(grace=2.0)
        assert await call == "done"
    finally:
        await client.transport.close()


async def test_connecting_to_a_closed_port_fails_fast() -> None:
    with socket.socket() as probe:  # find a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = RPC(TcpTransport())
    try:
        with pytest.raises(PeerUnavailable, match=f"cannot connect to 127.0.0.1:{port}"):
            await client.call(f"127.0.0.1:{port}", "echo", 1, timeout=5)
    finally:
        await client.transport.close()


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = await serving(host="::1")
    except OSError as error:
        pytest.skip(f"cannot bind [::1]: {error}")
    client = RPC(TcpTransport(TcpConfig(host="::1")))
    try:
        assert server.endpoint is not None and server.endpoint.startswith("[::1]:")
        assert await client.call(server.endpoint, "echo", "v6") == "v6"
    finally:
        await client.transport.close()
        await server.transport.close()


async def test_client_mode_peer_refuses_a_request_sent_back_over_its_own_connection() -> None:
    """A server may send a request over the connection a client-mode peer opened: refused."""
    refusal: asyncio.Future[tuple[int, int, bytes]] = asyncio.get_running_loop().create_future()

    async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
        length, kind, request_id = HEADER.unpack(await reader.readexactly(HEADER_SIZE))
        return kind, request_id, await reader.readexactly(length - KIND_AND_ID.size)

    async def turn_around(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, client_request, _ = await read_frame(reader)
        writer.write(encode_frame(FrameKind.REQUEST, 7, pack(("echo", "in"))))
        refusal.set_result(await read_frame(reader))
        writer.write(encode_frame(FrameKind.RESPONSE, client_request, pack((0, "out"))))
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    raw_server = await asyncio.start_server(turn_around, "127.0.0.1", 0)
    port = raw_server.sockets[0].getsockname()[1]
    client = RPC(TcpTransport())
    client.register("echo", echo)  # registered, but the peer does not listen
    try:
        assert await client.call(f"127.0.0.1:{port}", "echo", "out", timeout=5) == "out"
        kind, request_id, reason = await asyncio.wait_for(refusal, timeout=5)
        assert (kind, request_id) == (FrameKind.ERROR, 7)
        assert reason == b"this peer does not accept requests (client mode)"
    finally:
        await client.transport.close()
        raw_server.close()
        await raw_server.wait_closed()


async def test_a_request_times_out_even_while_the_peer_does_not_read_it() -> None:
    """Waiting for a backlogged connection to drain must not outlast the request's timeout."""
    with socket.socket() as listener:  # accepts connections in the kernel, never reads them
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = RPC(TcpTransport())
        try:
            with pytest.raises(RequestTimeout):
                call = client.call(f"127.0.0.1:{port}", "echo", bytes(8 << 20), timeout=0.5)
                await asyncio.wait_for(call, timeout=10)
        finally:
            await client.transport.close(grace=0)
