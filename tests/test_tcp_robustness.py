"""Bad input to a TCP peer closes only the offending connection; everyone else is served."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest
import pytest_asyncio
from good_client import GoodClient

from hivemind_core.net import RPC, DropReason, TcpConfig, TcpTransport, parse_endpoint
from hivemind_core.net.frames import PREFIX, FrameKind, encode_frame

pytestmark = pytest.mark.asyncio(loop_factories=["tcp"])


async def echo(_peer: str, body: Any) -> Any:
    return body


@pytest_asyncio.fixture
async def server():
    # no per-host cap: the flood test below is about the overall one (test_tcp_hostile covers it)
    rpc = RPC(TcpTransport(TcpConfig(max_incoming=100, max_incoming_per_host=None)))
    rpc.register("echo", echo)
    endpoint = await rpc.serve()
    good = GoodClient(endpoint)
    await good.served_again()  # connected and served before any abuse starts
    yield endpoint, good, rpc.transport
    await good.served_again()  # and still served at the end
    await good.stop()
    await rpc.transport.close()
    assert not good.failures, f"a well-behaved client was disturbed: {good.failures[:3]}"


async def send_and_expect_close(endpoint: str, data: bytes, *, eof: bool = False) -> None:
    host, port = parse_endpoint(endpoint)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    if eof:
        writer.write_eof()
    try:
        remainder = await asyncio.wait_for(reader.read(), timeout=5)
        assert remainder == b"", "the server must not answer garbage"
    except ConnectionResetError:
        pass  # the server aborted the connection: also a close
    finally:
        writer.close()


def warnings_for(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


async def test_random_bytes(server, caplog) -> None:
    endpoint, _, _ = server
    rng = random.Random(1234)
    for size in (1, 7, 100, 4096, 65536):
        await send_and_expect_close(endpoint, rng.randbytes(size), eof=True)
    assert warnings_for(caplog).count("closing connection") + warnings_for(caplog).count("mid-frame") >= 5


async def test_truncated_frame(server, caplog) -> None:
    endpoint, _, _ = server
    frame = encode_frame(FrameKind.REQUEST, 1, bytes(1000))
    await send_and_expect_close(endpoint, frame[:113], eof=True)
    assert "closed mid-frame: 113 bytes of an incomplete frame discarded" in warnings_for(caplog)


async def test_oversized_length_prefix_is_refused_before_the_body_arrives(server, caplog) -> None:
    endpoint, _, _ = server
    await send_and_expect_close(endpoint, PREFIX.pack(0xFFFFFFF0))  # no EOF: the prefix is enough
    assert "exceeds the 67108864-byte limit" in warnings_for(caplog)


async def test_invalid_msgpack_body(server, caplog) -> None:
    endpoint, _, _ = server
    await send_and_expect_close(endpoint, encode_frame(FrameKind.REQUEST, 1, b"\xc1\xc1\xc1"))
    assert "request is not a msgpack [method, body] pair" in warnings_for(caplog)


async def test_method_name_of_the_wrong_type(server, caplog) -> None:
    endpoint, _, _ = server
    await send_and_expect_close(endpoint, encode_frame(FrameKind.REQUEST, 1, b"\x92\x01\xc0"))
    assert "names its method with a int, not a string" in warnings_for(caplog)


async def test_unknown_frame_kind(server, caplog) -> None:
    endpoint, _, _ = server
    await send_and_expect_close(endpoint, encode_frame(99, 1, b"x"))  # type: ignore[arg-type]
    assert "unknown frame kind 99" in warnings_for(caplog)


async def test_frame_shorter_than_its_header(server, caplog) -> None:
    endpoint, _, _ = server
    await send_and_expect_close(endpoint, PREFIX.pack(3) + b"abc")
    assert "shorter than the frame header" in warnings_for(caplog)


async def test_flood_of_a_thousand_connections(server, caplog) -> None:
    endpoint, good, transport = server
    host, port = parse_endpoint(endpoint)
    results = await asyncio.gather(
        *(asyncio.open_connection(host, port) for _ in range(1000)), return_exceptions=True
    )
    flood = [r for r in results if not isinstance(r, BaseException)]
    async with asyncio.timeout(60):  # until the server has admitted or refused every one
        while sum(transport.stats.dropped.values()) + transport.stats.incoming < len(flood):
            await asyncio.sleep(0.01)
    assert transport.stats.incoming <= 100
    assert transport.stats.dropped[DropReason.INCOMING_LIMIT] >= len(flood) - 100
    assert "incoming connection limit of 100 reached" in warnings_for(caplog)
    served_during_flood = good.successes
    for _, writer in flood:
        writer.close()
    async with asyncio.timeout(5):  # until the server has seen the flood go
        while transport.stats.incoming > 1:
            await asyncio.sleep(0.01)
    newcomer = RPC(TcpTransport())
    try:
        assert await newcomer.call(endpoint, "echo", "after the flood", timeout=5) == "after the flood"
    finally:
        await newcomer.transport.close()
    assert served_during_flood > 0
