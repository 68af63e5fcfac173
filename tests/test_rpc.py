"""The RPC suite: the same tests, unchanged, over TcpTransport and SimTransport."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from hivemind_core.net import (
    FrameTooLarge,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    TransportClosed,
    UnknownMethodError,
)

pytestmark = pytest.mark.asyncio


async def echo(_peer: str, body: Any) -> Any:
    return body


class Stall:
    """An RPC method that never finishes on its own, and notes when it starts and is cancelled."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, _peer: str, _body: Any) -> Any:
        self.entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_echo_round_trips_msgpack_values(world) -> None:
    server = await world.rpc({"echo": echo})
    client = await world.rpc(serve=False)
    for body in [None, 7, -1.5, "héllo", b"\x00\xff", [1, [2, {"k": b"v"}]], {"nested": {"a": [True]}}]:
        assert await client.call(server.endpoint, "echo", body) == body


async def test_hundred_concurrent_requests_are_multiplexed(world) -> None:
    active = 0
    all_in_service = asyncio.Event()

    async def gated_echo(_peer: str, body: Any) -> Any:
        """Answers only once all 100 requests are in service at the same time."""
        nonlocal active
        active += 1
        if active == 100:
            all_in_service.set()
        await all_in_service.wait()
        return body

    server = await world.rpc({"echo": gated_echo})
    client = await world.rpc(serve=False)
    calls = [client.call(server.endpoint, "echo", i, timeout=10) for i in range(100)]
    assert await asyncio.gather(*calls) == list(range(100))


async def test_sixteen_mebibyte_payload(world) -> None:
    server = await world.rpc({"echo": echo})
    client = await world.rpc(serve=False)
    payload = os.urandom(16 * 1024 * 1024)
    assert await client.call(server.endpoint, "echo", payload, timeout=30) == payload


async def test_remote_exception_is_reraised_with_its_type_and_message(world) -> None:
    async def fail(_peer: str, body: Any) -> Any:
        raise ValueError(f"cannot digest {body!r}")

    server = await world.rpc({"fail": fail, "echo": echo})
    client = await world.rpc(serve=False)
    with pytest.raises(RemoteError) as caught:
        await client.call(server.endpoint, "fail", "pebbles")
    assert caught.value.remote_type == "ValueError"
    assert caught.value.remote_message == "cannot digest 'pebbles'"
    assert caught.value.method == "fail"
    assert await client.call(server.endpoint, "echo", 1) == 1, "the server keeps serving"


async def test_timeout_raises_and_cancels_the_remote_work(world) -> None:
    stall = Stall()
    server = await world.rpc({"stall": stall})
    client = await world.rpc(serve=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RequestTimeout):
        await client.call(server.endpoint, "stall", timeout=0.3)
    elapsed = loop.time() - started
    if world.sim is not None:
        assert elapsed == pytest.approx(0.3), "in virtual time the deadline is exact"
    else:  # the timeout is what is tested: not before it, and (generously, for a loaded machine) soon after
        assert 0.3 <= elapsed < 10
    await asyncio.wait_for(stall.cancelled.wait(), timeout=5)


async def test_unknown_method(world) -> None:
    server = await world.rpc({"echo": echo})
    client = await world.rpc(serve=False)
    with pytest.raises(UnknownMethodError, match="unknown method 'ech0'; this peer serves: echo"):
        await client.call(server.endpoint, "ech0", 1)


async def test_peer_gone_mid_request(world) -> None:
    stall = Stall()
    server = await world.rpc({"stall": stall})
    client = await world.rpc(serve=False)
    call = asyncio.ensure_future(client.call(server.endpoint, "stall", timeout=60))
    await stall.entered.wait()
    await server.transport.close(grace=0.05)
    with pytest.raises(PeerUnavailable):
        await asyncio.wait_for(call, timeout=10)
    with pytest.raises(PeerUnavailable):  # and it stays gone: new calls are refused
        await client.call(server.endpoint, "stall", timeout=10)


async def test_cancelling_the_caller_cancels_the_remote_handler(world) -> None:
    stall = Stall()
    server = await world.rpc({"stall": stall})
    client = await world.rpc(serve=False)
    call = asyncio.ensure_future(client.call(server.endpoint, "stall", timeout=60))
    await stall.entered.wait()
    call.cancel()
    await asyncio.wait_for(stall.cancelled.wait(), timeout=5)
    assert call.cancelled()


async def test_frame_limit_applies_to_requests_and_responses(world) -> None:
    async def inflate(_peer: str, size: int) -> bytes:
        return bytes(size)

    server = await world.rpc({"inflate": inflate}, max_frame_size=4096)
    client = await world.rpc(serve=False, max_frame_size=4096)
    with pytest.raises(FrameTooLarge, match="exceeds the 4096-byte frame limit"):
        await client.call(server.endpoint, "inflate", bytes(5000))
    with pytest.raises(RemoteError, match="exceeds the 4096-byte frame limit"):
        await client.call(server.endpoint, "inflate", 5000)
    assert len(await client.call(server.endpoint, "inflate", 1000)) == 1000


async def test_client_mode_peer_calls_out_but_refuses_requests(world) -> None:
    """The server calls back whoever called it: a client-mode caller refuses the request."""
    refusals: list[BaseException] = []

    async def call_back(caller: str, _body: Any) -> str:
        with pytest.raises((RemoteError, PeerUnavailable)) as refused:
            await server.call(caller, "echo", "in", timeout=5)
        refusals.append(refused.value)
        return "called back"

    server = await world.rpc({"echo": echo, "call_back": call_back})
    client = await world.rpc({"echo": echo}, serve=False)
    assert client.endpoint is None
    assert await client.call(server.endpoint, "echo", "out") == "out"
    assert await client.call(server.endpoint, "call_back") == "called back"
    if world.kind == "sim":  # the request reaches it, and its transport answers with an error
        assert "does not accept requests (client mode)" in str(refusals[0])
    else:  # nothing listens where its requests come from (a raw request: test_tcp_transport)
        assert isinstance(refusals[0], PeerUnavailable)


async def test_closed_transport_refuses_to_send(world) -> None:
    server = await world.rpc({"echo": echo})
    client = await world.rpc(serve=False)
    await client.transport.close()
    with pytest.raises(TransportClosed):
        await client.call(server.endpoint, "echo", 1)


async def test_malformed_response_is_a_protocol_error(world) -> None:
    raw_server = world.transport()

    async def garbage(_peer: str, _payload: bytes) -> bytes:
        return b"\xc1 not msgpack"

    endpoint = await raw_server.listen(garbage)
    client = await world.rpc(serve=False)
    with pytest.raises(ProtocolError, match="malformed response"):
        await client.call(endpoint, "anything")


async def test_unencodable_result_is_reported_not_fatal(world) -> None:
    async def bad_result(_peer: str, _body: Any) -> Any:
        return object()

    server = await world.rpc({"bad": bad_result, "echo": echo})
    client = await world.rpc(serve=False)
    with pytest.raises(RemoteError, match="not msgpack-encodable"):
        await client.call(server.endpoint, "bad")
    assert await client.call(server.endpoint, "echo", 2) == 2


async def test_unencodable_body_fails_locally(world) -> None:
    server = await world.rpc({"echo": echo})
    client = await world.rpc(serve=False)
    with pytest.raises(TypeError, match="cannot encode the body of 'echo'"):
        await client.call(server.endpoint, "echo", object())


async def test_caller_endpoint_is_passed_to_the_method(world) -> None:
    async def whoami(peer: str, _body: Any) -> str:
        return peer

    server = await world.rpc({"whoami": whoami})
    client = await world.rpc()
    seen = await client.call(server.endpoint, "whoami")
    assert isinstance(seen, str) and seen
    if world.kind == "sim":
        assert seen == client.endpoint
    else:  # over TCP it is the connection's source address: same host, ephemeral port
        assert seen.split(":")[0] == "127.0.0.1"


async def test_a_request_over_its_methods_size_limit_is_refused_unread(world, monkeypatch) -> None:
    import hivemind_core.net.rpc as rpc_module

    calls: list[Any] = []

    async def record(_peer: str, body: Any) -> Any:
        calls.append(body)
        return len(body)

    server = await world.rpc()
    server.register("small", record, max_request_size=1024)
    server.register("big", record)
    client = await world.rpc(serve=False)
    decoded: list[int] = []
    real_unpack = rpc_module.unpack
    monkeypatch.setattr(rpc_module, "unpack", lambda data: decoded.append(len(data)) or real_unpack(data))
    with pytest.raises(RemoteError, match="a 'small' request may be 1024 bytes") as refused:
        await client.call(server.endpoint, "small", bytes(4096), timeout=5)
    assert refused.value.remote_type == "RequestTooLarge"
    assert calls == [] and all(size < 4096 for size in decoded), "the oversized body was decoded"
    assert await client.call(server.endpoint, "small", bytes(512), timeout=5) == 512
    assert await client.call(server.endpoint, "big", bytes(4096), timeout=5) == 4096
    with pytest.raises(ValueError, match="max_request_size"):
        server.register("zero", record, max_request_size=0)
