"""The simulated network delivers at the times its model predicts, and fails as it says."""

from __future__ import annotations

import asyncio
import time

import networkx as nx
import pytest

from hivemind_core.net import PeerUnavailable, RequestTimeout, TransportClosed
from hivemind_core.net.frames import HEADER_SIZE
from hivemind_sim import AccessLink, Simulation, SimulationStuck, Topology
from hivemind_sim.world.network import PeerState

BACKBONE_LATENCY = 0.040


@pytest.fixture
def sim():
    """Two backbone nodes, x and y, 40 ms apart."""
    graph = nx.Graph()
    graph.add_edge("x", "y", latency=BACKBONE_LATENCY)
    with Simulation(seed=0, topology=Topology(graph)) as simulation:
        yield simulation


@pytest.fixture
def bare_sim():
    with Simulation(seed=0) as simulation:
        yield simulation


async def record_arrivals(transport, arrivals: list[tuple[float, bytes]]) -> None:
    loop = asyncio.get_running_loop()

    async def handler(_peer: str, payload: bytes) -> bytes:
        arrivals.append((loop.time(), payload))
        return b""

    await transport.listen(handler)


def small_from_far_then_big_from_near(sim, far, near, sink) -> tuple[tuple[float, float], float, int]:  # type: ignore[no-untyped-def]
    """``far`` sends 100 bytes to ``sink``; 50 ms later ``near`` (1 ms away) sends 1 MB. Returns
    (big's arrival, small's arrival), when big would be done at 1 MB/s with nothing ahead of
    it, and small's size on the wire: a FIFO bottleneck serves whichever arrived at it first."""
    arrivals: list[tuple[float, bytes]] = []
    big, small = b"B" * 1_000_000, b"s" * 100

    async def main() -> None:
        await record_arrivals(sink, arrivals)
        first = asyncio.ensure_future(far.request("sink", small, timeout=10))
        await asyncio.sleep(0.050)
        second = asyncio.ensure_future(near.request("sink", big, timeout=10))
        await asyncio.gather(first, second)

    sim.run(main())
    (t_big, p_big), (t_small, p_small) = arrivals
    assert p_small == small and p_big == big
    return (t_big, t_small), 0.050 + 0.001 + (HEADER_SIZE + len(big)) / 1e6, HEADER_SIZE + len(small)


def test_arrival_time_matches_the_model(sim) -> None:
    sender_link = AccessLink(uplink_bps=8e6, downlink_bps=1e9, latency=0.002)
    receiver_link = AccessLink(uplink_bps=1e9, downlink_bps=4e6, latency=0.003)
    a = sim.add_peer("a", node="x", link=sender_link)
    b = sim.add_peer("b", node="y", link=receiver_link)
    payload = bytes(100_000)
    size = HEADER_SIZE + len(payload)
    arrivals: list[tuple[float, bytes]] = []

    async def main() -> None:
        await record_arrivals(b, arrivals)
        await asyncio.sleep(1.0)  # start from a non-zero time
        await a.request("b", payload, timeout=10)

    sim.run(main())
    predicted = 1.0 + 8 * size / 8e6 + (0.002 + BACKBONE_LATENCY + 0.003) + 8 * size / 4e6
    assert arrivals[0][0] == pytest.approx(predicted, abs=1e-9)
    assert sim.network.path_latency("a", "b") == pytest.approx(0.045)


def test_back_to_back_messages_queue_on_the_uplink(sim) -> None:
    a = sim.add_peer("a", node="x", link=AccessLink(uplink_bps=1e6))
    b = sim.add_peer("b", node="y")
    payload = bytes(10_000)
    serialization = 8 * (HEADER_SIZE + len(payload)) / 1e6
    arrivals: list[tuple[float, bytes]] = []

    async def main() -> None:
        await record_arrivals(b, arrivals)
        await asyncio.gather(*(a.request("b", payload, timeout=10) for _ in range(3)))

    sim.run(main())
    times = [t for t, _ in arrivals]
    expected = [BACKBONE_LATENCY + (i + 1) * serialization for i in range(3)]
    assert times == pytest.approx(expected, abs=1e-9)


def test_downlink_queues_in_arrival_order_not_send_order() -> None:
    """A small message sent first from far away waits behind a big one that arrives first."""
    graph = nx.Graph()
    graph.add_edge("far", "hub", latency=0.100)
    graph.add_edge("near", "hub", latency=0.001)
    with Simulation(seed=0, topology=Topology(graph)) as sim:
        far = sim.add_peer("far", node="far")
        near = sim.add_peer("near", node="near")
        sink = sim.add_peer("sink", node="hub", link=AccessLink(downlink_bps=8e6))  # 1 MB/s
        (t_big, t_small), big_done, small_size = small_from_far_then_big_from_near(sim, far, near, sink)
        assert t_big == pytest.approx(big_done, abs=1e-9)
        assert t_small == pytest.approx(big_done + small_size / 1e6, abs=1e-9)


def test_total_loss_gives_a_timeout(sim) -> None:
    a = sim.add_peer("a", node="x", link=AccessLink(loss=1.0))
    b = sim.add_peer("b", node="y")

    async def main() -> None:
        await record_arrivals(b, [])
        with pytest.raises(RequestTimeout):
            await a.request("b", b"ping", timeout=2.0)

    sim.run(main())
    assert sim.network.stats.dropped_loss == 2  # the request, then the cancel sent on timeout
    assert sim.now == pytest.approx(2.0)


def test_partial_loss_drops_about_the_stated_fraction(sim) -> None:
    a = sim.add_peer("a", node="x", link=AccessLink(loss=0.3))
    b = sim.add_peer("b", node="y")
    outcomes: list[bool] = []

    async def main() -> None:
        await record_arrivals(b, [])
        for _ in range(400):
            try:
                await a.request("b", b"ping", timeout=0.5)
                outcomes.append(True)
            except RequestTimeout:
                outcomes.append(False)

    sim.run(main())
    # a round trip crosses the lossy link twice: success probability 0.7 ** 2 = 0.49
    assert 0.40 < sum(outcomes) / len(outcomes) < 0.58


def test_partition_gives_a_timeout_and_heal_restores(sim) -> None:
    a = sim.add_peer("a", node="x")
    b = sim.add_peer("b", node="y")
    c = sim.add_peer("c", node="y")

    async def main() -> None:
        await record_arrivals(b, [])
        sim.network.partition([["a"]])  # a alone; b and c together
        with pytest.raises(RequestTimeout):
            await a.request("b", b"across", timeout=1.0)
        assert await c.request("b", b"same side", timeout=1.0) == b""
        sim.network.heal()
        assert await a.request("b", b"healed", timeout=1.0) == b""

    sim.run(main())
    assert sim.network.stats.dropped_partition == 2  # the request and its cancel


def test_crash_mid_request_gives_a_timeout_not_a_reset(sim) -> None:
    a = sim.add_peer("a", node="x")
    b = sim.add_peer("b", node="y")
    handler_cancelled = asyncio.Event()

    async def stall(_peer: str, _payload: bytes) -> bytes:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise
        return b""

    async def main() -> None:
        await b.listen(stall)
        call = asyncio.ensure_future(a.request("b", b"work", timeout=3.0))
        await asyncio.sleep(0.5)
        sim.network.crash("b")
        assert sim.network.state("b") is PeerState.CRASHED
        with pytest.raises(RequestTimeout):
            await call
        assert sim.now == pytest.approx(3.0)
        assert handler_cancelled.is_set(), "the crashed peer's work stops too"
        with pytest.raises(TransportClosed):
            await b.request("a", b"from the dead", timeout=1.0)

    sim.run(main())


def test_restarted_peer_serves_again(sim) -> None:
    a = sim.add_peer("a", node="x")
    b = sim.add_peer("b", node="y")

    async def main() -> None:
        await record_arrivals(b, [])
        sim.network.crash("b")
        with pytest.raises(RequestTimeout):
            await a.request("b", b"anyone?", timeout=1.0)
        reborn = sim.restart("b")
        await record_arrivals(reborn, [])
        assert await a.request("b", b"back?", timeout=1.0) == b""

    sim.run(main())


def test_closed_peer_refuses_after_one_round_trip(sim) -> None:
    a = sim.add_peer("a", node="x")
    b = sim.add_peer("b", node="y")

    async def main() -> None:
        await record_arrivals(b, [])
        await b.close()
        started = sim.now
        with pytest.raises(PeerUnavailable):
            await a.request("b", b"hello?", timeout=10)
        assert sim.now - started == pytest.approx(2 * BACKBONE_LATENCY)

    sim.run(main())


class Recorder:
    """Not a transport: anything with the ``Receiver`` methods can sit on the network."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []
        self.resets: list[str] = []
        self.crashed = False
        self.arrived = asyncio.Event()
        self.reset = asyncio.Event()

    def frame_arrived(self, src: str, frame: bytes) -> None:
        self.frames.append((src, frame))
        self.arrived.set()

    def reset_received(self, src: str) -> None:
        self.resets.append(src)
        self.reset.set()

    def crash(self) -> None:
        self.crashed = True


def test_a_graceful_close_resets_only_the_peers_it_was_exchanging_with(sim) -> None:
    a = sim.add_peer("a", node="x")
    recorders = {name: Recorder() for name in ("busy", "idle")}
    for name, recorder in recorders.items():
        sim.network.add_peer(name, node="y")
        sim.network.attach(name, recorder)

    async def main() -> None:
        call = asyncio.ensure_future(a.request("busy", b"never answered", timeout=10))
        await recorders["busy"].arrived.wait()
        await a.close(grace=0)
        with pytest.raises(TransportClosed):
            await call
        await asyncio.wait_for(recorders["busy"].reset.wait(), timeout=1)

    sim.run(main())
    assert [(src, frame[HEADER_SIZE:]) for src, frame in recorders["busy"].frames] == [
        ("a", b"never answered")
    ]
    assert recorders["busy"].resets == ["a"]
    assert recorders["idle"].frames == [] and recorders["idle"].resets == []
    sim.network.crash("busy")
    assert recorders["busy"].crashed


def test_sleeping_a_simulated_day_takes_no_real_time(bare_sim) -> None:
    sim = bare_sim

    async def main() -> None:
        await asyncio.sleep(86400)

    wall_started = time.perf_counter()
    sim.run(main())
    wall = time.perf_counter() - wall_started
    assert sim.now == 86400
    assert wall < 0.5, f"a simulated day took {wall:.3f} s of real time"


def test_waiting_for_the_impossible_raises_instead_of_hanging(bare_sim) -> None:
    sim = bare_sim

    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(SimulationStuck, match="can never happen"):
        sim.run(main())


def test_simpy_processes_and_asyncio_share_one_clock(bare_sim) -> None:
    sim = bare_sim
    log: list[tuple[float, str]] = []

    def simpy_side(env):
        for _ in range(3):
            yield env.timeout(1.5)
            log.append((env.now, "simpy"))

    async def asyncio_side() -> None:
        for _ in range(4):
            await asyncio.sleep(1.0)
            log.append((sim.loop.time(), "asyncio"))

    sim.env.process(simpy_side(sim.env))
    sim.run(asyncio_side())
    assert log == [
        (1.0, "asyncio"),
        (1.5, "simpy"),
        (2.0, "asyncio"),
        (3.0, "simpy"),
        (3.0, "asyncio"),
        (4.0, "asyncio"),
    ]


def test_invalid_network_settings_are_rejected_clearly(sim) -> None:
    with pytest.raises(ValueError, match="loss must be a probability"):
        AccessLink(loss=1.5)
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        AccessLink(uplink_bps=0)
    with pytest.raises(ValueError, match="backbone node 'nowhere' is not in topology"):
        sim.add_peer("a", node="nowhere")
    sim.add_peer("a", node="x")
    with pytest.raises(ValueError, match="already exists"):
        sim.add_peer("a", node="x")
    with pytest.raises(ValueError, match="more than one partition group"):
        sim.network.partition([["a"], ["a"]])


def backbone(*edges: tuple[str, str, float, float | None]) -> Topology:
    """A topology from (a, b, latency, bandwidth or None) edges."""
    graph = nx.Graph()
    for a, b, latency, bandwidth in edges:
        graph.add_edge(a, b, latency=latency, **({} if bandwidth is None else {"bandwidth": bandwidth}))
    return Topology(graph)


def test_frames_queue_on_a_backbone_edge_one_direction_at_a_time() -> None:
    topology = backbone(("x", "y", BACKBONE_LATENCY, 8e6))  # 1 MB/s between x and y
    with Simulation(seed=0, topology=topology) as sim:
        first, second, far_sink = (sim.add_peer(name, node="x") for name in ("s1", "s2", "far-sink"))
        sink, back = (sim.add_peer(name, node="y") for name in ("sink", "back"))
        arrivals: list[tuple[float, bytes]] = []
        payload = bytes(100_000)
        transmit = (HEADER_SIZE + len(payload)) / 1e6

        async def main() -> None:
            await record_arrivals(sink, arrivals)
            await record_arrivals(far_sink, arrivals)
            await asyncio.gather(
                first.request("sink", payload, timeout=10),
                second.request("sink", payload + b"2", timeout=10),  # behind the first on x->y
                back.request("far-sink", payload + b"back", timeout=10),  # y->x: a queue of its own
            )

        sim.run(main())
        arrived = {payload[len(payload) - 4 :]: t for t, payload in arrivals}
        assert arrived[bytes(4)] == pytest.approx(transmit + BACKBONE_LATENCY, abs=1e-9)
        assert arrived[b"back"] == pytest.approx(transmit + 4e-6 + BACKBONE_LATENCY, abs=1e-9)
        assert arrived[bytes(3) + b"2"] == pytest.approx(2 * transmit + 1e-6 + BACKBONE_LATENCY, abs=1e-9)


def test_a_path_queues_on_its_slowest_edge_in_arrival_order() -> None:
    """A small frame sent first from far away waits behind a big one that reaches the
    bottleneck first; the path's other edges cost only their latency."""
    topology = backbone(
        ("far", "hub", 0.100, None),
        ("near", "hub", 0.001, 1e9),
        ("hub", "sink", 0.010, 8e6),  # the bottleneck of both paths: 1 MB/s
    )
    with Simulation(seed=0, topology=topology) as sim:
        far, near = sim.add_peer("far", node="far"), sim.add_peer("near", node="near")
        sink = sim.add_peer("sink", node="sink")
        (t_big, t_small), big_done, small_size = small_from_far_then_big_from_near(sim, far, near, sink)
        assert t_big == pytest.approx(big_done + 0.010, abs=1e-9)
        assert t_small == pytest.approx(big_done + small_size / 1e6 + 0.010, abs=1e-9)


def test_an_unlimited_backbone_adds_no_queue() -> None:
    topology = backbone(("x", "y", BACKBONE_LATENCY, None))
    assert not topology.limited and topology.bottleneck("x", "y") is None
    with Simulation(seed=0, topology=topology) as sim:
        senders = [sim.add_peer(f"s{i}", node="x") for i in range(3)]
        sink = sim.add_peer("sink", node="y")
        arrivals: list[tuple[float, bytes]] = []

        async def main() -> None:
            await record_arrivals(sink, arrivals)
            await asyncio.gather(*(s.request("sink", bytes(100_000), timeout=10) for s in senders))

        sim.run(main())
        assert [t for t, _ in arrivals] == [BACKBONE_LATENCY] * 3
