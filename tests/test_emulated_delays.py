"""User-space delays in the TCP transport (``--emulate-delays``), over real loopback TCP.

Wall-clock bounds here are floors (a delay cannot be skipped) plus loose sanity ceilings; the
order of events is waited on, never slept for.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from test_tcp_transport import serving

from hivemind_core.cli import _listening_transport, build_parser
from hivemind_core.net import RPC, TcpConfig, TcpTransport
from hivemind_core.net.delays import Delay, DelayLine, EmulatedDelays, load_delays

pytestmark = pytest.mark.timeout(60)
tcp = pytest.mark.asyncio(loop_factories=["tcp"])

SANITY = 3.0  # seconds on top of the delays that a loaded CI machine may take


async def timed_call(client: RPC, endpoint: str, body: Any) -> float:
    started = time.monotonic()
    assert await client.call(endpoint, "echo", body, timeout=30) == body
    return time.monotonic() - started


@tcp
async def test_a_round_trip_takes_both_directions_and_a_new_connection_one_more() -> None:
    server = await serving()
    delay = Delay(there=0.05, back=0.08)
    client = RPC(TcpTransport(TcpConfig(delays=EmulatedDelays(endpoints={server.endpoint: delay}))))
    try:
        first = await timed_call(client, server.endpoint, b"x")  # SYN, SYN-ACK, request, reply
        again = await timed_call(client, server.endpoint, b"y")
        assert 2 * delay.round_trip <= first < 2 * delay.round_trip + SANITY
        assert delay.round_trip <= again < delay.round_trip + SANITY
    finally:
        await client.transport.close()
        await server.transport.close()


@tcp
async def test_peers_on_one_host_each_delay_only_the_connections_they_dial() -> None:
    """Loopback: the accepting side cannot tell callers apart, so it adds nothing, whatever its
    table says; a round trip is the dialler's two one-way delays, whichever side dials."""
    b = await serving(delays=EmulatedDelays(default=Delay(0.03, 0.04)))
    to_b = {b.endpoint: Delay(0.06, 0.06)}
    a = await serving(delays=EmulatedDelays(default=Delay(5.0, 5.0), endpoints=to_b))
    try:
        b_to_a = await timed_call(b, a.endpoint, b"b")
        assert 2 * 0.07 <= b_to_a < SANITY  # a's 5 s are not added to what it accepted
        a_to_b = await timed_call(a, b.endpoint, b"a")
        assert 2 * 0.12 <= a_to_b < 2 * 0.12 + SANITY
    finally:
        await a.transport.close()
        await b.transport.close()


@tcp
async def test_frames_to_one_destination_keep_their_order() -> None:
    arrived: list[int] = []

    async def record(_peer: str, body: Any) -> Any:
        arrived.append(body[0])
        return body[0]  # small answers: the server never waits for its backlog, which reorders

    server = RPC(TcpTransport())
    server.register("record", record)
    await server.serve()
    client = RPC(TcpTransport(TcpConfig(delays=EmulatedDelays(default=Delay(0.02, 0.03)))))
    try:
        await client.call(server.endpoint, "record", [-1, b""])  # the connection is up
        sizes = [10, 200_000, 3, 70_000, 1, 100_000] * 20  # small and large (two write paths)
        calls = [
            client.call(server.endpoint, "record", [i, bytes(size)], timeout=30)
            for i, size in enumerate(sizes)
        ]
        async with asyncio.timeout(30):
            answers = await asyncio.gather(*calls)
        assert arrived == [-1, *range(len(sizes))]
        assert answers == list(range(len(sizes)))
    finally:
        await client.transport.close()
        await server.transport.close()


@tcp
async def test_delay_line_keeps_push_order_at_equal_deadlines() -> None:
    delivered: list[int] = []
    done = asyncio.Event()

    def deliver(item: int) -> None:
        delivered.append(item)
        if item == 999:
            done.set()

    line: DelayLine[int] = DelayLine(0.01, deliver)
    for item in range(1000):  # one loop pass: many share a deadline
        line.push(item)
    assert len(line) == 1000
    async with asyncio.timeout(10):
        await done.wait()
    assert delivered == list(range(1000))
    assert len(line) == 0


@tcp
async def test_held_bytes_count_as_queued_until_written() -> None:
    server = await serving()
    client = RPC(TcpTransport(TcpConfig(delays=EmulatedDelays(endpoints={server.endpoint: Delay(0.3, 0.0)}))))
    transport = client.transport
    assert isinstance(transport, TcpTransport)
    try:
        await client.call(server.endpoint, "echo", b"", timeout=30)
        call = asyncio.create_task(client.call(server.endpoint, "echo", bytes(100_000), timeout=30))
        async with asyncio.timeout(10):
            while transport.stats.queued_bytes < 100_000:  # written, held in the send line
                await asyncio.sleep(0)
            assert await call == bytes(100_000)
        assert transport.stats.queued_bytes == 0
    finally:
        await client.transport.close()
        await server.transport.close()


@tcp
async def test_an_answer_sent_before_the_close_is_read_before_it() -> None:
    """The server answers and closes; the client, holding the answer for the way back, reads
    it first and then the close, as it would over a slow link."""
    serving_now, release = asyncio.Event(), asyncio.Event()

    async def slow(_peer: str, body: Any) -> Any:
        serving_now.set()
        await release.wait()
        return body

    server = RPC(TcpTransport())
    server.register("slow", slow)
    await server.serve()
    client = RPC(TcpTransport(TcpConfig(delays=EmulatedDelays(default=Delay(0.0, 0.3)))))
    try:
        async with asyncio.timeout(20):
            call = asyncio.create_task(client.call(server.endpoint, "slow", "answer", timeout=30))
            await serving_now.wait()
            closing = asyncio.create_task(server.transport.close(grace=10))
            release.set()
            assert await call == "answer"
            await closing
    finally:
        await client.transport.close()
        await server.transport.close()


@tcp
async def test_without_a_table_or_with_zero_delays_nothing_is_held() -> None:
    server = await serving()
    plain = RPC(TcpTransport())
    zero = RPC(
        TcpTransport(
            TcpConfig(
                delays=EmulatedDelays(
                    endpoints={server.endpoint: Delay()}, hosts={"127.0.0.1": Delay(9.0, 9.0)}
                )
            )
        )
    )
    try:
        for client in (plain, zero):
            assert await timed_call(client, server.endpoint, b"z") < SANITY
            transport = client.transport
            assert isinstance(transport, TcpTransport)
            (connection,) = transport._outgoing.values()
            assert connection._send_line is None and connection._receive_line is None
        assert plain.transport.config.delays is None  # type: ignore[attr-defined]
    finally:
        for rpc in (plain, zero, server):
            await rpc.transport.close()


def test_lookup_by_endpoint_then_host_then_default() -> None:
    delays = EmulatedDelays.from_json(
        {
            "default": 0.5,
            "endpoints": {"127.0.0.1:7001": 0.04, "[::1]:7002": [0.01, 0.02]},
            "hosts": {"10.77.0.3": 0.05, "::1": 0.25},
        }
    )
    assert delays.to("127.0.0.1:7001") == Delay(0.04, 0.04)
    assert delays.to("[::1]:7002") == Delay(0.01, 0.02)
    assert delays.to("[::1]:7003") == Delay(0.25, 0.25)
    assert delays.to("10.77.0.3:7000") == Delay(0.05, 0.05)
    assert delays.to("127.0.0.1:7002") == Delay(0.5, 0.5)
    with pytest.raises(TypeError):
        delays.endpoints["127.0.0.1:1"] = Delay()  # type: ignore[index]


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("{", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"delay": 1}', "unknown key 'delay'"),
        ('{"default": -0.1}', "default: expected seconds"),
        ('{"default": true}', "default: expected seconds"),
        ('{"default": 61}', "default: expected seconds"),
        ('{"endpoints": []}', "'endpoints' must be an object"),
        ('{"endpoints": {"127.0.0.01:7001": 0.1}}', "endpoints.127.0.0.01:7001: invalid endpoint"),
        ('{"endpoints": {"127.0.0.1": 0.1}}', "endpoints.127.0.0.1: invalid endpoint"),
        ('{"endpoints": {"127.0.0.1:7001": [0.1]}}', "endpoints.127.0.0.1:7001: expected seconds"),
        ('{"endpoints": {"127.0.0.1:7001": "0.1"}}', "endpoints.127.0.0.1:7001: expected seconds"),
        ('{"hosts": {"10.77.0.3:7000": 0.1}}', "hosts.10.77.0.3:7000: invalid endpoint"),
        ('{"hosts": {"10.77.0.3": NaN}}', "hosts.10.77.0.3: expected seconds"),
    ],
)
def test_the_loader_names_the_file_and_the_bad_key(tmp_path: Path, content: str, complaint: str) -> None:
    path = tmp_path / "peer.delays.json"
    path.write_text(content)
    with pytest.raises(ValueError) as error:
        load_delays(path)
    assert str(error.value).startswith(f"{path}: ")
    assert complaint in str(error.value)


def test_the_loader_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.json: cannot read the delay table"):
        load_delays(tmp_path / "missing.json")


def test_the_cli_flag_is_off_by_default_and_hands_the_table_to_the_transport(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _listening_transport(build_parser().parse_args(["serve"])).config.delays is None
    path = tmp_path / "delays.json"
    path.write_text(json.dumps({"endpoints": {"127.0.0.1:7001": 0.04}}))
    args = build_parser().parse_args(["dht", "--emulate-delays", str(path)])
    assert _listening_transport(args).config.delays == EmulatedDelays(
        endpoints={"127.0.0.1:7001": Delay(0.04, 0.04)}
    )
    path.write_text('{"default": "slow"}')
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--emulate-delays", str(path)])
    assert f"argument --emulate-delays: {path}: default: expected seconds" in capsys.readouterr().err
