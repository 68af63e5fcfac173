"""Faults a scenario injects into the simulated world: each does what it says, and only that.

All of these run in virtual time, where ``asyncio.sleep`` is exact: sleeping to a time is how a
test says "at t = 2 s", not a guess at how long something takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import networkx as nx
import pytest
import torch

from hivemind_core.moe.client import MalformedResponse
from hivemind_core.moe.server import ExpertBackend
from hivemind_core.net import RequestTimeout
from hivemind_core.net.frames import HEADER_SIZE
from hivemind_sim import AccessLink, SimNetwork, Simulation, Topology
from hivemind_sim.swarms.compute import DeviceModel, SimulatedDevice
from hivemind_sim.swarms.faults import behave, misbehave, misbehaving
from hivemind_sim.world.network import PeerState

BACKBONE_LATENCY = 0.040


@pytest.fixture
def sim():
    """Two backbone nodes, x and y, 40 ms apart."""
    graph = nx.Graph()
    graph.add_edge("x", "y", latency=BACKBONE_LATENCY)
    with Simulation(seed=0, topology=Topology(graph)) as simulation:
        yield simulation


async def record_arrivals(transport, arrivals: list[tuple[float, bytes]]) -> None:
    loop = asyncio.get_running_loop()

    async def handler(_peer: str, payload: bytes) -> bytes:
        arrivals.append((loop.time(), payload))
        return b"ok:" + payload

    await transport.listen(handler)


async def sleep_until(sim: Simulation, when: float) -> None:
    await asyncio.sleep(when - sim.now)


# ---- freeze -------------------------------------------------------------------------------


def test_a_frozen_peer_holds_frames_and_senders_time_out_without_a_reset(sim) -> None:
    a = sim.add_peer("a", node="x")
    b = sim.add_peer("b", node="y")
    arrivals: list[tuple[float, bytes]] = []
    resets: list[str] = []
    a.reset_received = resets.append  # type: ignore[method-assign]

    async def main() -> None:
        await record_arrivals(b, arrivals)
        assert sim.network.freeze("b")
        assert sim.network.state("b") is PeerState.FROZEN
        first = asyncio.ensure_future(a.request("b", b"first", timeout=10.0))
        with pytest.raises(RequestTimeout):
            await a.request("b", b"given up", timeout=1.0)
        second = asyncio.ensure_future(a.request("b", b"second", timeout=10.0))
        assert sim.now == pytest.approx(1.0)
        await sleep_until(sim, 5.0)
        assert arrivals == [] and resets == [] and not first.done()
        assert sim.network.thaw("b")
        assert await asyncio.gather(first, second) == [b"ok:first", b"ok:second"]
        assert sim.now == pytest.approx(5.0 + BACKBONE_LATENCY)

    sim.run(main())
    # the kernel held them in arrival order ("given up" was written first: "first" only left
    # when its task ran); a handler starts as soon as its frame is read, so "given up" is served
    # before its cancel (held behind "first") is read, and the requester, gone, drops the answer
    assert arrivals == [(5.0, b"given up"), (5.0, b"first"), (5.0, b"second")]
    assert sim.network.state("b") is PeerState.UP
    assert resets == []


def test_a_frozen_peer_sends_nothing_until_thawed(sim) -> None:
    a = sim.add_peer("a", node="x")
    b = sim.add_peer("b", node="y")
    arrivals: list[tuple[float, bytes]] = []

    async def main() -> None:
        await record_arrivals(a, arrivals)
        sim.network.freeze("b")
        call = asyncio.ensure_future(b.request("a", b"written while stopped", timeout=10.0))
        await sleep_until(sim, 3.0)
        assert arrivals == [] and not call.done()
        sim.network.thaw("b")
        assert await call == b"ok:written while stopped"
        assert sim.now == pytest.approx(3.0 + 2 * BACKBONE_LATENCY)

    sim.run(main())
    assert arrivals == [(pytest.approx(3.0 + BACKBONE_LATENCY), b"written while stopped")]


def test_an_answer_reaching_a_frozen_peer_waits_for_the_thaw(sim) -> None:
    a = sim.add_peer("a", node="x")
    b = sim.add_peer("b", node="y")

    async def main() -> None:
        await record_arrivals(a, [])
        call = asyncio.ensure_future(b.request("a", b"question", timeout=10.0))
        await asyncio.sleep(BACKBONE_LATENCY / 2)  # the request is on its way
        sim.network.freeze("b")
        await sleep_until(sim, 1.0)
        assert not call.done(), "the answer arrived at 80 ms but the process is stopped"
        sim.network.thaw("b")
        assert await call == b"ok:question"
        assert sim.now == 1.0

    sim.run(main())


def test_crashing_a_frozen_peer_loses_what_was_held(sim) -> None:
    a = sim.add_peer("a", node="x")
    b = sim.add_peer("b", node="y")
    arrivals: list[tuple[float, bytes]] = []

    async def main() -> None:
        await record_arrivals(b, arrivals)
        sim.network.freeze("b")
        with pytest.raises(RequestTimeout):
            await a.request("b", b"never read", timeout=1.0)
        sim.network.crash("b")
        assert sim.network.state("b") is PeerState.CRASHED
        assert not sim.network.thaw("b"), "a dead process cannot be resumed"
        reborn = sim.restart("b")
        await record_arrivals(reborn, arrivals)
        assert await a.request("b", b"after restart", timeout=1.0) == b"ok:after restart"

    sim.run(main())
    assert [payload for _, payload in arrivals] == [b"after restart"]


def test_freeze_and_thaw_only_act_on_a_peer_in_the_right_state(sim) -> None:
    sim.add_peer("a", node="x")
    sim.network.add_peer("down", node="y")  # placed, never started
    assert not sim.network.thaw("a")
    assert not sim.network.freeze("down")
    assert sim.network.freeze("a")
    assert not sim.network.freeze("a")
    assert sim.network.thaw("a")
    with pytest.raises(KeyError, match="no peer with address 'nobody'"):
        sim.network.freeze("nobody")


def test_a_frozen_peer_holds_a_bounded_buffer(sim) -> None:
    a = sim.add_peer("a", node="x")
    b = sim.add_peer("b", node="y")
    arrivals: list[tuple[float, bytes]] = []
    payload = bytes(1000)

    async def main() -> None:
        await record_arrivals(b, arrivals)
        sim.network.freeze("b", buffer_bytes=3 * (HEADER_SIZE + len(payload)))
        calls = [asyncio.ensure_future(a.request("b", payload, timeout=1.0)) for _ in range(5)]
        await asyncio.gather(*calls, return_exceptions=True)
        await sleep_until(sim, 2.0)  # the cancels sent at the timeouts have reached b too
        sim.network.thaw("b")
        await asyncio.sleep(0)

    sim.run(main())
    assert len(arrivals) == 3
    assert sim.network.stats.dropped_frozen == 2 + 5  # two requests, then all five cancels


def frozen_run(seed: int) -> str:
    """A small world where one peer freezes and thaws while others keep calling it."""
    with Simulation(seed=seed, topology=Topology.world_regions(), jitter=0.1) as sim:
        regions = sim.network.topology.nodes
        peers = [sim.add_peer(f"p{i}", node=regions[i % len(regions)]) for i in range(6)]

        async def caller(transport, rng_name: str) -> None:
            rng = sim.random(rng_name)
            for _ in range(20):
                with contextlib.suppress(RequestTimeout):
                    await transport.request(f"p{rng.randrange(6)}", b"x" * rng.randrange(100), timeout=0.5)

        async def main() -> None:
            for peer in peers:
                await record_arrivals(peer, [])
            callers = asyncio.gather(*(caller(p, f"c{i}") for i, p in enumerate(peers)))
            await asyncio.sleep(1.0)
            sim.network.freeze("p2")
            await asyncio.sleep(2.0)
            sim.network.thaw("p2")
            await callers

        sim.run(main())
        return sim.digest()


def test_freezing_is_deterministic() -> None:
    assert frozen_run(1) == frozen_run(1)
    assert frozen_run(1) != frozen_run(2)


# ---- loss on every path; degrading one peer's link -----------------------------------------


def success_rate(sim: Simulation, a, b, requests: int = 400) -> float:
    outcomes: list[bool] = []

    async def main() -> None:
        if b.endpoint is None:
            await record_arrivals(b, [])
        for _ in range(requests):
            try:
                await a.request("b", b"ping", timeout=0.5)
                outcomes.append(True)
            except RequestTimeout:
                outcomes.append(False)

    sim.run(main())
    return sum(outcomes) / len(outcomes)


def test_path_loss_drops_frames_on_every_path(sim) -> None:
    a, b = sim.add_peer("a", node="x"), sim.add_peer("b", node="y")
    sim.network.set_loss(1.0)
    assert success_rate(sim, a, b, requests=3) == 0
    assert sim.network.stats.dropped_loss == 6  # each request and its cancel


def test_path_loss_combines_with_access_link_loss(sim) -> None:
    a, b = sim.add_peer("a", node="x"), sim.add_peer("b", node="y")
    sim.network.set_loss(0.2)
    assert 0.55 < success_rate(sim, a, b) < 0.73  # a round trip: 0.8 ** 2 = 0.64
    sim.network.set_link("a", AccessLink(loss=0.2))
    assert 0.33 < success_rate(sim, a, b) < 0.49  # (0.8 * 0.8) ** 2 = 0.41


def test_path_loss_must_be_a_probability(sim) -> None:
    with pytest.raises(ValueError, match=r"path loss must be a probability in \[0, 1\], got 1.5"):
        sim.network.set_loss(1.5)
    with pytest.raises(ValueError, match=r"path loss must be a probability in \[0, 1\], got -0.1"):
        SimNetwork(sim.env, Topology.single(), rng=random.Random(0), loss=-0.1)
    assert SimNetwork(sim.env, Topology.single(), rng=random.Random(0), loss=0.25).loss == 0.25


def test_a_link_changed_mid_flight_paces_what_has_not_reached_it_yet(sim) -> None:
    original = AccessLink(downlink_bps=8e6, latency=0.0)
    a = sim.add_peer("a", node="x")
    b = sim.add_peer("b", node="y", link=original)
    arrivals: list[tuple[float, bytes]] = []
    payload = bytes(10_000)
    size = HEADER_SIZE + len(payload)
    slow = original.degraded(extra_latency=0.5, bandwidth_bps=4e6)

    async def main() -> None:
        await record_arrivals(b, arrivals)
        first = asyncio.ensure_future(a.request("b", payload, timeout=10))
        await asyncio.sleep(0.010)  # on the backbone: its latency is fixed, its downlink is not
        sim.network.set_link("b", slow)
        assert sim.network.link("b") == slow
        await first
        second_sent = sim.now
        await a.request("b", payload, timeout=10)
        sim.network.set_link("b", original)
        assert sim.network.link("b") == original
        third_sent = sim.now
        await a.request("b", payload, timeout=10)
        assert [t for t, _ in arrivals] == pytest.approx(
            [
                BACKBONE_LATENCY + 8 * size / 4e6,
                second_sent + BACKBONE_LATENCY + 0.5 + 8 * size / 4e6,
                third_sent + BACKBONE_LATENCY + 8 * size / 8e6,
            ],
            abs=1e-9,
        )

    sim.run(main())


def test_a_degraded_link_adds_latency_combines_loss_and_caps_bandwidth() -> None:
    link = AccessLink(uplink_bps=20e6, downlink_bps=100e6, latency=0.015, loss=0.1)
    worse = link.degraded(extra_latency=0.1, loss=0.5, bandwidth_bps=50e6)
    assert (worse.uplink_bps, worse.downlink_bps) == (20e6, 50e6)
    assert (worse.latency, worse.loss) == pytest.approx((0.115, 0.55))
    assert link.degraded() == link
    with pytest.raises(ValueError, match="loss must be a probability"):
        link.degraded(loss=2)


# ---- slow compute ---------------------------------------------------------------------------


def test_batches_started_while_slowed_take_factor_times_longer() -> None:
    device = SimulatedDevice(DeviceModel(flops=1e9, overhead=0.0))
    finished: dict[str, float] = {}

    async def batch(name: str) -> None:
        await device.run(lambda: name, flops=1e9)  # one second at full speed
        finished[name] = asyncio.get_running_loop().time()

    async def main() -> None:
        running = asyncio.ensure_future(batch("before"))
        await asyncio.sleep(0.5)
        device.slow_down(10)
        await batch("slowed")  # queued behind "before", which keeps its own duration
        device.restore()
        await asyncio.gather(running, batch("restored"))

    with Simulation() as sim:
        sim.run(main())
    assert finished == {"before": 1.0, "slowed": 11.0, "restored": 12.0}
    with pytest.raises(ValueError, match="a slow-down factor must be a finite number > 0, got 0"):
        device.slow_down(0)


# ---- misbehaving experts ----------------------------------------------------------------------

HID = 8


def expert(uid: str = "ffn.0") -> ExpertBackend:
    return ExpertBackend.create(uid, "ffn", HID, seed=0)


def test_a_misbehaving_expert_answers_nan_then_truly_again() -> None:
    backend = expert()
    x = torch.randn(4, HID, generator=torch.Generator().manual_seed(1))
    (true,) = backend.forward([x])
    assert misbehave(backend, output="nan") == 1 and misbehaving(backend)
    (answer,) = backend.forward([x])
    assert answer.shape == true.shape and answer.dtype == true.dtype
    assert torch.isnan(answer).all()
    assert behave(backend) == 1 and not misbehaving(backend)
    assert torch.equal(backend.forward([x])[0], true)
    assert behave(backend) == 0


def test_garbage_has_the_right_shape_the_wrong_scale_and_repeats_per_seed() -> None:
    x = torch.randn(64, HID, generator=torch.Generator().manual_seed(1))

    def garbage(seed: int) -> torch.Tensor:
        backend = expert()
        misbehave(backend, output="garbage", seed=seed)
        return backend.forward([x])[0]

    answer = garbage(seed=3)
    assert answer.shape == (64, HID) and answer.dtype == torch.float32
    assert torch.isfinite(answer).all() and answer.std() > 1e5
    assert torch.equal(answer, garbage(seed=3))
    assert not torch.equal(answer, garbage(seed=4))


def test_a_misbehaving_expert_still_returns_true_gradients_and_trains() -> None:
    honest, liar = expert(), expert()
    misbehave([liar], output="nan")
    x = torch.randn(4, HID, generator=torch.Generator().manual_seed(1))
    grad = torch.randn(4, HID, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(liar.backward([x], [grad]), honest.backward([x], [grad]))
    for mine, theirs in zip(liar.module.parameters(), honest.module.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_misbehave_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="output must be one of nan, garbage, slow, plausible, got 'zeros'"):
        misbehave(expert(), output="zeros")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected an ExpertServer or ExpertBackends, got str"):
        behave(["ffn.0"])  # type: ignore[list-item]


@pytest.mark.asyncio
async def test_a_misbehaving_server_answers_wrong_values_over_the_network(world) -> None:
    hosted = [expert("ffn.0"), expert("ffn.1")]
    server = await world.expert_server(hosted)
    client = await world.moe_client([server.endpoint])
    x = torch.randn(3, HID, generator=torch.Generator().manual_seed(1))
    (true,) = await client.forward("ffn.1", server.endpoint, [x], timeout=10)
    assert misbehave(server, output="nan") == 2
    with pytest.raises(MalformedResponse, match="returned NaN or infinite values"):
        await client.forward("ffn.1", server.endpoint, [x], timeout=10)  # a client refuses NaN
    misbehave(server, output="garbage", seed=7)
    (answer,) = await client.forward("ffn.0", server.endpoint, [x], timeout=10)
    assert answer.abs().mean() > 1e4
    assert behave(server) == 2
    (answer,) = await client.forward("ffn.1", server.endpoint, [x], timeout=10)
    torch.testing.assert_close(answer, true)
