"""A frozen expert server (stops answering but stays connected) costs one training step, not
every step: the beam search serves its cached prefix entries while a background refresh waits
on the frozen DHT replica, and the client bans the server after its first missed deadline.

In simulation the freeze is a partition: every frame to or from the server is dropped, so its
requests time out exactly as those to a SIGSTOPped process do. Step times are virtual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import torch

from hivemind_core.moe.client import MoEBeamSearcher, MoEConfig, RemoteMixtureOfExperts
from hivemind_core.moe.server import ExpertBackend
from hivemind_core.moe.uid import expand_pattern

HID = 8
GRID = (3, 4)
BETWEEN_STEPS = 0.5  # the trainer's other work per step (data loading...), in virtual seconds
FREEZE = 10.0
SLOW = 0.5  # a normal step takes ~10 ms of virtual time here


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch ops run on the loop thread and the trainer thread in turn: with a thread pool each,
    their idle workers spin against each other (10x slower on two cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_a_frozen_server_costs_at_most_one_slow_step(world, one_torch_thread) -> None:
    uids = expand_pattern("ffn.[0:3].[0:4]")
    hosted = [ExpertBackend.create(uid, "ffn", HID, seed=i) for i, uid in enumerate(uids)]
    first = await world.expert_server(hosted[0::3])
    for i in (1, 2):
        await world.expert_server(hosted[i::3], [first.endpoint])
    frozen = world.servers[2]
    client = await world.moe_client([first.endpoint])
    layer = RemoteMixtureOfExperts(
        MoEConfig(in_features=HID, grid_size=GRID, uid_prefix="ffn", k_best=4), client=client
    )  # default timeouts, cache_ttl and lookup_timeout
    loop = asyncio.get_running_loop()
    x = torch.randn(16, HID, generator=torch.Generator().manual_seed(0))

    def train_step() -> None:
        layer(x).pow(2).mean().backward()

    async def steps_for(seconds: float) -> list[float]:
        durations, end = [], loop.time() + seconds
        while loop.time() < end:
            started = loop.time()
            await world.run_trainer(train_step)
            durations.append(loop.time() - started)
            await asyncio.sleep(BETWEEN_STEPS)
        return durations

    before = await steps_for(3.0)
    world.sim.network.partition([[frozen.endpoint]])
    during = await steps_for(FREEZE)
    world.sim.network.heal()
    after = await steps_for(3.0)
    await client.close()
    print(
        f"\nstep times (virtual s): before max {max(before):.3f}; during the {FREEZE:.0f} s freeze "
        f"{[round(d, 3) for d in during]}; after max {max(after):.3f}; "
        f"DHT lookups {layer.searcher.lookups}"
    )
    assert max(before) < SLOW
    slow = [d for d in during if d >= SLOW]
    assert len(slow) <= 1, f"{len(slow)} of {len(during)} steps were slow during the freeze: {during}"
    assert len(during) > FREEZE / (2 * BETWEEN_STEPS), "training carried on through the freeze"
    assert client.is_banned(frozen.endpoint), "the frozen server was banned after its first missed deadline"
    assert layer.stats.forward_failures >= 1


@pytest.mark.asyncio(loop_factories=["sim"])
async def test_stale_entries_are_served_while_one_refresh_runs_and_close_cancels_it(world) -> None:
    uids = expand_pattern("ffn.[0:3].[0:4]")
    hosted = [ExpertBackend.create(uid, "ffn", HID, seed=i) for i, uid in enumerate(uids)]
    first = await world.expert_server(hosted[0::3])
    for i in (1, 2):
        await world.expert_server(hosted[i::3], [first.endpoint])
    client = await world.moe_client([first.endpoint])
    searcher = MoEBeamSearcher(client, "ffn", GRID, cache_ttl=2.0, max_staleness=30.0, lookup_timeout=1.0)
    loop = asyncio.get_running_loop()
    logits = [torch.zeros(2, 3), torch.zeros(2, 4)]
    fetched = await searcher.search(logits, 4)
    assert all(len(choices) == 4 for choices in fetched)
    world.sim.network.partition([[world.servers[2].endpoint]])  # lookups now wait on a frozen replica

    await asyncio.sleep(3.0)  # the entries age past cache_ttl (virtual time)
    lookups, started = searcher.lookups, loop.time()
    assert await searcher.search(logits, 4) == fetched
    assert loop.time() == started, "stale entries were served without waiting"
    assert searcher.lookups == lookups + len(GRID) and searcher._refreshing, "one refresh per dimension runs"
    assert await searcher.search(logits, 4) == fetched
    assert searcher.lookups == lookups + len(GRID), "no second refresh of prefixes already being refreshed"

    await searcher.close()
    assert not searcher._refreshing and not client._background, "close cancelled the refresh"

    await asyncio.sleep(40.0)  # past max_staleness: nothing usable, so a search waits for the DHT
    started = loop.time()
    await searcher.search(logits, 4)
    assert loop.time() > started
    assert not client._background, "the waited-for lookup finished"
