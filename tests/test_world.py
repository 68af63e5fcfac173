"""Peers not handed a clock or random stream take the running loop's world's, never the wall's."""

from __future__ import annotations

import asyncio
import time

import pytest

from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.world import WallClockInSimulation, default_clock, default_rng, wall_clock
from hivemind_sim import Simulation


def test_a_simulated_peer_without_a_clock_runs_on_virtual_time() -> None:
    with Simulation(seed=5) as sim:

        async def main() -> tuple[float, float, int]:
            await asyncio.sleep(1000)
            node = await DHTNode.create(sim.add_peer("a"), config=DHTConfig(max_per_subnet=None))
            try:
                return node.now(), asyncio.get_running_loop().time(), node.node_id
            finally:
                await node.shutdown()

        now, loop_time, node_id = sim.run(main())
    assert now == loop_time == 1000
    with Simulation(seed=5) as again:
        node_id_again = again.run(_node_id(again))
    assert node_id == node_id_again, "a default identity in simulation must come from the seed"


async def _node_id(sim: Simulation) -> int:
    await asyncio.sleep(1000)
    node = await DHTNode.create(sim.add_peer("a"), config=DHTConfig(max_per_subnet=None))
    await node.shutdown()
    return node.node_id


def test_reading_the_wall_clock_inside_a_simulation_fails_loudly() -> None:
    with Simulation(seed=1) as sim:

        async def main() -> None:
            wall_clock()

        with pytest.raises(WallClockInSimulation, match="inside a simulation"):
            sim.run(main())


def test_default_streams_are_reproducible_and_distinct_per_request() -> None:
    def draws(seed: int) -> list[float]:
        with Simulation(seed=seed) as sim:

            async def main() -> list[float]:
                return [default_rng("x").random(), default_rng("x").random(), default_rng("y").random()]

            return sim.run(main())

    first = draws(1)
    assert first == draws(1)
    assert len(set(first)) == 3
    assert first != draws(2)


def test_outside_a_simulation_the_defaults_are_the_real_world() -> None:
    assert default_clock() is wall_clock
    assert abs(wall_clock() - time.time()) < 60
    assert default_rng("x").random() != default_rng("x").random()
