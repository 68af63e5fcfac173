"""The TCP model: handshakes, retransmissions and per-pair ordering, each when asked for."""

from __future__ import annotations

import asyncio

import pytest

from hivemind_core.net import RequestTimeout
from hivemind_sim import AccessLink, SimTransport, Simulation, TcpOptions
from hivemind_sim.scenario.format.loader import parse_scenario
from hivemind_sim.scenario.run.runner import run_scenario

ONE_WAY = 0.020  # two 10 ms access links
LINK = AccessLink(latency=0.010, uplink_bps=1e12, downlink_bps=1e12)


def round_trips(tcp: TcpOptions | None, pauses: list[float], *, loss: float = 0.0) -> list[float]:
    """Request durations from peer a to peer b, with ``pauses`` of idleness before each."""
    with Simulation(seed=1, tcp=tcp, loss=loss) as sim:
        a, b = sim.add_peer("a", link=LINK), sim.add_peer("b", link=LINK)

        async def main() -> list[float]:
            async def echo(_peer: str, payload: bytes) -> bytes:
                return payload

            await b.listen(echo)
            loop, took = asyncio.get_running_loop(), []
            for pause in pauses:
                await asyncio.sleep(pause)
                started = loop.time()
                try:
                    await a.request("b", b"x", timeout=30)
                except RequestTimeout:
                    took.append(float("inf"))
                    continue
                took.append(loop.time() - started)
            return took

        return sim.run(main())


def test_a_first_request_and_one_after_an_idle_close_pay_the_handshake() -> None:
    plain = round_trips(None, [0, 1, 70, 1])
    assert plain == pytest.approx([2 * ONE_WAY] * 4, abs=1e-6)
    shaken = round_trips(TcpOptions(handshake=True), [0, 1, 70, 1])
    handshake = 2 * ONE_WAY
    assert shaken == pytest.approx(
        [4 * ONE_WAY, 2 * ONE_WAY, 2 * ONE_WAY + handshake, 2 * ONE_WAY], abs=1e-6
    ), "first, open, idle for 70 s > 60 s, open again"


def test_a_restarted_peer_shakes_hands_again() -> None:
    """A crash resets the peer's connections: after its restart, the next request pays again."""
    with Simulation(seed=1, tcp=TcpOptions(handshake=True)) as sim:
        a, b = sim.add_peer("a", link=LINK), sim.add_peer("b", link=LINK)

        async def echo(_peer: str, payload: bytes) -> bytes:
            return payload

        async def timed() -> float:
            started = asyncio.get_running_loop().time()
            await a.request("b", b"x", timeout=5)
            return asyncio.get_running_loop().time() - started

        async def main() -> list[float]:
            await b.listen(echo)
            took = [await timed(), await timed()]
            sim.network.crash("b")
            await SimTransport(sim.network, "b").listen(echo)
            took.append(await timed())
            return took

        assert sim.run(main()) == pytest.approx([4 * ONE_WAY, 2 * ONE_WAY, 4 * ONE_WAY], abs=1e-6)


def test_a_full_pool_closes_its_least_recently_used_connection() -> None:
    """With room for 2 connections, a third closes the one used longest ago: its next request
    shakes hands again, the others' do not."""
    with Simulation(seed=1, tcp=TcpOptions(handshake=True, max_connections=2)) as sim:
        a = sim.add_peer("a", link=LINK)
        servers = {name: sim.add_peer(name, link=LINK) for name in "bcd"}

        async def echo(_peer: str, payload: bytes) -> bytes:
            return payload

        async def timed(to: str) -> float:
            started = asyncio.get_running_loop().time()
            await a.request(to, b"x", timeout=5)
            return asyncio.get_running_loop().time() - started

        async def main() -> list[float]:
            for server in servers.values():
                await server.listen(echo)
            return [await timed(to) for to in "bcbdbc"]

        fresh, open_ = 4 * ONE_WAY, 2 * ONE_WAY
        assert sim.run(main()) == pytest.approx([fresh, fresh, open_, fresh, open_, fresh], abs=1e-6)


def test_lost_messages_arrive_late_instead_of_never_with_retransmit() -> None:
    pauses = [1.0] * 40
    dropped = round_trips(None, pauses, loss=0.3)
    resent = round_trips(TcpOptions(retransmit=True), pauses, loss=0.3)
    assert sum(t == float("inf") for t in dropped) >= 10, "datagrams: about half the requests are lost"
    assert all(t < float("inf") for t in resent), "TCP: every request gets through"
    rto = 0.2  # max(rto_min, 2 round trips of 40 ms)
    late = [t for t in resent if t > 2 * ONE_WAY + 1e-6]
    assert late and min(late) == pytest.approx(2 * ONE_WAY + rto, abs=1e-6)


def test_frames_between_two_peers_keep_their_order() -> None:
    """A frame held back by a retransmission holds back those sent after it (one byte stream)."""
    with Simulation(seed=3, tcp=TcpOptions(retransmit=True), loss=0.3) as sim:
        a, b = sim.add_peer("a", link=LINK), sim.add_peer("b", link=LINK)
        arrived: list[int] = []

        async def record(_peer: str, payload: bytes) -> bytes:
            arrived.append(int(payload))
            return b""

        async def main() -> None:
            await b.listen(record)
            await asyncio.gather(*(a.request("b", str(i).encode(), timeout=60) for i in range(50)))

        sim.run(main())
        assert arrived == list(range(50))
        assert sim.network.stats.retransmitted > 0


SCENARIO = """\
schema_version: 1
name: tcp
seed: 2
warmup: 30s
duration: 30s
topology: {{loss: 5%, tcp: {{handshake: {handshake}, retransmit: {retransmit}}}}}
peers:
  - {{group: dht, role: dht, count: 8, link: {{latency: 20ms}}}}
workload:
  dht: {{gets_per_second: 2, stores_per_second: 0.5, lookups_per_second: 0}}
"""


def test_a_scenario_turns_the_model_on_and_its_runs_stay_deterministic() -> None:
    off = run_scenario(parse_scenario(SCENARIO.format(handshake="false", retransmit="false")))
    on = parse_scenario(SCENARIO.format(handshake="true", retransmit="true"))
    first, again = run_scenario(on), run_scenario(on)
    assert first.stopped is None and first.digest == again.digest != off.digest
    summary, plain = first.recorder.summary(), off.recorder.summary()
    assert summary["dht.get.success_rate"] >= plain["dht.get.success_rate"], "lost messages come late"
