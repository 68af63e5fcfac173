"""TCP serves a request's first step as its frame is handed over, as the simulation does: no
task per request for handlers that answer at once, and a handler may still dial in that step."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hivemind_core.net import RPC, RequestTimeout, TcpConfig, TcpTransport

pytestmark = pytest.mark.asyncio(loop_factories=["tcp"])


async def test_a_handler_that_answers_at_once_runs_without_a_task_of_its_own() -> None:
    tasks: list[asyncio.Task[Any] | None] = []

    async def where(_peer: str, body: Any) -> Any:
        tasks.append(asyncio.current_task())
        return body

    server = RPC(TcpTransport())
    server.register("where", where)
    await server.serve()
    client = RPC(TcpTransport())
    try:
        assert await asyncio.gather(*(client.call(server.endpoint, "where", i) for i in range(20))) == list(
            range(20)
        )
        assert tasks == [None] * 20
    finally:
        await client.transport.close()
        await server.transport.close()


async def test_a_handler_may_dial_another_peer_in_its_first_step() -> None:
    """Dialling waits with ``asyncio.wait``, not ``asyncio.timeout`` (which needs a task), so a
    relay whose first step calls a peer it has no connection to yet still answers."""

    async def echo(_peer: str, body: Any) -> Any:
        return body

    far = RPC(TcpTransport())
    far.register("echo", echo)
    await far.serve()
    relay = RPC(TcpTransport())

    async def forward(_peer: str, body: Any) -> Any:
        return await relay.call(far.endpoint, "echo", body, timeout=5)

    relay.register("forward", forward)
    await relay.serve()
    client = RPC(TcpTransport())
    try:
        assert await asyncio.gather(*(client.call(relay.endpoint, "forward", i) for i in range(10))) == list(
            range(10)
        )
        assert relay.transport.connection_count == 2  # one in from the client, one out to far
    finally:
        for rpc in (client, relay, far):
            await rpc.transport.close()


async def test_a_dial_slower_than_the_request_timeout_fails_as_a_timeout() -> None:
    """A request whose connection is not ready by its deadline fails with RequestTimeout, and
    the dial it started is given up once nobody waits for it."""
    transport = TcpTransport(TcpConfig(connect_timeout=30))
    pool = transport._pool
    started = asyncio.Event()

    async def slow_dial(*_args: Any) -> Any:
        started.set()
        await asyncio.sleep(30)

    pool._dial = slow_dial  # type: ignore[method-assign]
    try:
        with pytest.raises(RequestTimeout, match=r"connecting to 127\.0\.0\.1:9 took longer"):
            await transport.request("127.0.0.1:9", b"x", timeout=0.05)
        assert started.is_set()
        await asyncio.sleep(0)  # the cancelled dial finishes unwinding
        assert not pool.dials
    finally:
        await transport.close()
