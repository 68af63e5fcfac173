"""What runs in a simulation may not depend on memory addresses, the garbage collector or threads.

A set of tasks iterates in the order of their addresses, which change from run to run (with
ASLR, another PYTHONHASHSEED, or whatever else the process allocated before); a pending task
that nothing references is destroyed by the garbage collector, running its ``finally`` blocks
whenever the collector happens to run; a thread's result arrives at a wall-clock moment. Each
test here pins one place where that once decided what a run sent, or could have.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest

from hivemind_core.dht.background import Background
from hivemind_core.moe.client import MoEClient
from hivemind_core.moe.client.beam_search import MoEBeamSearcher
from hivemind_core.net import RPC
from hivemind_sim import Simulation
from hivemind_sim.swarms.baton import Baton

MANY = 64
"""Enough tasks that address order and creation order cannot agree by chance."""


async def _record_cancellation(order: list[int], index: int) -> None:
    """Wait on a future of its own (a shared one would wake every waiter in one order) and note
    when the cancellation reaches it."""
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        order.append(index)
        raise


def test_a_node_cancels_its_background_work_in_the_order_it_began() -> None:
    """A cancelled request writes a CANCEL frame: the order of cancellation is the wire's order.
    A graceful leave in a flash crowd cancelled hand-overs in address order, and one seed gave a
    different trace digest in every process."""
    order: list[int] = []

    async def main() -> None:
        background = Background()
        for index in range(MANY):
            background.spawn(_record_cancellation(order, index))
        await asyncio.sleep(0)  # every task starts waiting
        await background.cancel_all()

    with Simulation() as sim:
        sim.run(main())
    assert order == list(range(MANY))


def test_a_moe_client_cancels_its_background_work_in_the_order_it_began() -> None:
    order: list[int] = []

    async def main(sim: Simulation) -> None:
        client = MoEClient(rpc=RPC(sim.add_peer("client")), dht=None, bridge=Baton())
        for index in range(MANY):
            client.spawn(_record_cancellation(order, index), name=f"background {index}")
        await asyncio.sleep(0)
        await client.close()

    with Simulation() as sim:
        sim.run(main(sim))
    assert order == list(range(MANY))


def test_beam_search_raises_the_failure_of_the_first_prefix_it_waited_for() -> None:
    """Several shared fetches failed: the one raised is the first needed, not the first in memory."""

    async def fail(index: int) -> None:
        raise LookupError(f"fetch {index} failed")

    async def main(sim: Simulation) -> str:
        client = MoEClient(rpc=RPC(sim.add_peer("client")), dht=None, bridge=Baton())
        searcher = MoEBeamSearcher(client, "ffn", [MANY])
        prefixes = [f"ffn.{index}." for index in range(MANY)]
        fetches = [asyncio.get_running_loop().create_task(fail(index)) for index in range(MANY)]
        await asyncio.wait(fetches)
        # fetches started earlier by other searches, each still the one in flight for its prefix
        searcher._refreshing.update(zip(prefixes, fetches, strict=True))
        try:
            with pytest.raises(LookupError) as raised:
                await searcher._fetch(prefixes, dimension=0, fresh=False)
        finally:
            for fetch in fetches:
                fetch.exception()  # retrieved: none is reported as never retrieved
        return str(raised.value)

    with Simulation() as sim:
        assert sim.run(main(sim)) == "fetch 0 failed"


def test_closing_a_simulation_cancels_what_still_runs_in_the_order_it_began() -> None:
    order: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for index in range(MANY):
            loop.create_task(_record_cancellation(order, index))  # noqa: RUF006  (the loop must hold it)
        await asyncio.sleep(0)

    sim = Simulation()
    sim.run(main())
    sim.close()
    assert order == list(range(MANY))


def test_a_pending_task_nothing_references_is_not_collected_mid_run() -> None:
    """Collected, its ``finally`` would run whenever the collector runs: at a moment that other
    threads' allocations (a progress bar's) move from run to run."""
    events: list[str] = []

    async def orphan() -> None:
        try:
            await asyncio.get_running_loop().create_future()  # referenced by this task alone
        finally:
            events.append("finally")

    async def main() -> None:
        asyncio.get_running_loop().create_task(orphan())  # the reference is dropped at once
        await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
        events.append("end of main")

    sim = Simulation()
    sim.run(main())
    sim.close()
    assert events == ["end of main", "finally"]  # cancelled when the simulation closed


def test_an_abandoned_async_generator_is_closed_with_the_simulation_in_the_order_it_began() -> None:
    """Not when the collector finds it: asyncio would schedule its ``aclose()`` from there."""
    closed: list[int] = []

    async def numbers(index: int) -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.append(index)

    async def main() -> None:
        for index in range(MANY):
            await anext(numbers(index))  # started, then dropped
        gc.collect()
        for _ in range(3):
            await asyncio.sleep(0)
        closed.append(-1)

    sim = Simulation()
    sim.run(main())
    sim.close()
    assert closed == [-1, *range(MANY)]


def test_run_in_executor_is_refused_in_a_simulation() -> None:
    """A thread's result would reach the loop at a wall-clock moment, so no run could repeat."""

    async def main() -> None:
        with pytest.raises(RuntimeError, match="run_in_executor"):
            await asyncio.get_running_loop().run_in_executor(None, sum, [1, 2])
        with pytest.raises(RuntimeError, match="run_in_executor"):
            await asyncio.to_thread(sum, [1, 2])

    with Simulation() as sim:
        sim.run(main())
