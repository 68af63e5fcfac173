"""The TCP connection cuts any split of a byte stream into the same frames, in order.

Chunks are handed to a real incoming connection's ``data_received`` directly, so where the
stream is split is chosen here, not by the kernel: single bytes, many frames at once, a frame's
header split from its body, frames larger than one chunk, and more requests in one chunk than
a connection hands over in one turn (the rest waits in the buffer for its next turn).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from hivemind_core.net import TcpConfig, TcpTransport
from hivemind_core.net.frames import FrameKind, encode_frame
from hivemind_core.net.tcp.connection import Connection

pytestmark = pytest.mark.asyncio(loop_factories=["tcp"])


def chunks(stream: bytes, rng: random.Random) -> list[bytes]:
    """``stream`` cut at random points: mostly small pieces, some large, some single bytes."""
    pieces, offset = [], 0
    while offset < len(stream):
        size = rng.choice([1, 2, 7, 13, 14, 100, 1000, 5000, 70_000, 300_000])
        pieces.append(stream[offset : offset + size])
        offset += size
    return pieces


@pytest.mark.parametrize("seed", range(4))
async def test_any_split_of_the_stream_gives_the_same_requests_in_order(seed: int) -> None:
    rng = random.Random(seed)
    bodies = [rng.randbytes(rng.choice([0, 1, 50, 4095, 4096, 20_000, 200_000])) for _ in range(120)]
    received: list[bytes] = []
    all_in = asyncio.Event()

    async def record(_peer: str, body: bytes) -> bytes:
        received.append(body)
        if len(received) == len(bodies):
            all_in.set()
        return b""

    server = TcpTransport(TcpConfig(idle_timeout=0))
    client = TcpTransport()
    try:
        endpoint = await server.listen(record)
        assert await client.request(endpoint, b"hello", timeout=30) == b""
        received.clear()
        (connection,) = server._incoming
        assert isinstance(connection, Connection)
        # request ids far above the client's own, so the answers are late answers it ignores
        stream = b"".join(
            encode_frame(FrameKind.REQUEST, 1_000_000 + i, body) for i, body in enumerate(bodies)
        )
        for piece in chunks(stream, rng):
            connection.data_received(piece)
        await asyncio.wait_for(all_in.wait(), timeout=60)
        assert received == bodies
        assert not connection.dropped and not connection.buffer
    finally:
        await client.close()
        await server.close()


async def test_an_oversized_prefix_split_from_its_frame_is_refused_on_its_four_bytes() -> None:
    server = TcpTransport(TcpConfig(max_frame_size=1024))
    client = TcpTransport()

    async def echo(_peer: str, body: bytes) -> bytes:
        return body

    try:
        endpoint = await server.listen(echo)
        assert await client.request(endpoint, b"x", timeout=30) == b"x"
        (connection,) = server._incoming
        frame = encode_frame(FrameKind.REQUEST, 1_000_000, bytes(2000))
        connection.data_received(encode_frame(FrameKind.REQUEST, 1_000_001, b"fine") + frame[:4])
        assert connection.dropped
    finally:
        await client.close()
        await server.close()
