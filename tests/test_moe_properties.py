"""Property tests of DMoE fault tolerance in simulation, with hypothesis choosing who dies.

For any set of dead servers and any k_best / k_min, once the live servers have announced
again after the crash (as each does every ``announce_period``: an announcement whose replicas
all died is lost until then): the forward succeeds exactly when at least k_min experts are
alive; no dead expert is ever in the answer; every answer equals that expert's own output;
and the layer's output is the gate-weighted average of those answers. Each example is a fresh
deterministic simulation, so a failure replays from its seed.
``HYPOTHESIS_PROFILE=thorough`` runs 300 examples instead of 25.
"""

from __future__ import annotations

import asyncio
import copy

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.moe.client import ExpertsUnavailable, MoEClient, MoEConfig, RemoteMixtureOfExperts
from hivemind_core.moe.server import ExpertBackend, ExpertServer
from hivemind_core.moe.uid import expand_pattern
from hivemind_sim import AccessLink, Simulation
from hivemind_sim.swarms.baton import Baton
from hivemind_sim.swarms.compute import SimulatedDevice

HID, GRID, SERVERS = 8, (3, 4), 6
LINK = AccessLink(uplink_bps=1e8, downlink_bps=1e8, latency=0.005)


@given(
    dead=st.sets(st.integers(0, SERVERS - 1), max_size=SERVERS),
    k_best=st.integers(1, 4),
    k_min_share=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
# Five dead servers still announced by the only live one: each search used to try one dead
# expert, and all four searches were spent before reaching the live server's experts.
@example(dead={0, 1, 2, 3, 4}, k_best=1, k_min_share=1.0, seed=0)
# The live server's announcements had all five replicas among the dead: lost until it announces.
@example(dead={0, 1, 2, 3, 4}, k_best=1, k_min_share=1.0, seed=3)
def test_forward_tolerates_any_set_of_dead_servers(
    dead: set[int], k_best: int, k_min_share: float, seed: int
) -> None:
    k_min = round(k_min_share * k_best)
    uids = expand_pattern("ffn.[0:3].[0:4]")
    torch.manual_seed(seed)
    hosted = [ExpertBackend.create(uid, "ffn", HID) for uid in uids]
    local = {b.uid: copy.deepcopy(b.module) for b in hosted}
    shares = [hosted[i::SERVERS] for i in range(SERVERS)]
    alive_uids = {b.uid for i, share in enumerate(shares) if i not in dead for b in share}
    with Simulation(seed=seed) as sim:
        config = DHTConfig(max_per_subnet=None)

        async def node(name: str, initial: list[str], **options: object) -> DHTNode:
            transport = sim.add_peer(name, link=LINK)
            return await DHTNode.create(
                transport,
                initial_peers=initial,
                config=config,
                clock=sim.loop.time,
                rng=sim.random(name),
                **options,
            )

        async def main() -> None:
            nodes, servers = [], []
            for i, share in enumerate(shares):
                nodes.append(await node(f"server{i}", [nodes[0].endpoint] if nodes else []))
                servers.append(
                    ExpertServer(share, rpc=nodes[-1].rpc, dht=nodes[-1], executor=SimulatedDevice())
                )
                await servers[-1].start()
            trainer = await node("trainer", [nodes[0].endpoint], client_mode=True)
            for i in sorted(dead):
                sim.network.crash(f"server{i}")
                await servers[i].shutdown()
            for i, server in enumerate(servers):
                if i not in dead:  # a lone survivor holds its records itself (its store says False:
                    await server.announce()  # no other replica answered)
            baton = Baton()
            client = MoEClient(rpc=trainer.rpc, dht=trainer, bridge=baton)
            layer = RemoteMixtureOfExperts(
                MoEConfig(
                    in_features=HID,
                    grid_size=GRID,
                    uid_prefix="ffn",
                    k_best=k_best,
                    k_min=k_min,
                    forward_timeout=1.0,
                    timeout_after_k_min=0.2,
                    max_searches=4,
                ),
                client=client,
            )
            x = torch.randn(5, HID, generator=torch.Generator().manual_seed(seed))

            recorded = []
            remote_work = layer._forward_all

            async def recording(*args: object) -> object:  # keeps what this very forward got back
                recorded.append(await remote_work(*args))
                return recorded[-1]

            layer._forward_all = recording  # type: ignore[method-assign]

            def forward() -> object:
                try:
                    output = layer(x).detach()
                except ExpertsUnavailable:
                    return None
                return recorded[-1], output

            outcome = await baton.call(forward)
            if len(alive_uids) < k_min:
                assert outcome is None, "succeeded without k_min live experts"
                return
            assert outcome is not None, f"failed with {len(alive_uids)} live experts and k_min={k_min}"
            result, output = outcome
            assert (result.mask.sum(1) >= k_min).all()
            for s in range(x.shape[0]):
                for slot in range(k_best):
                    if not result.mask[s, slot]:
                        continue
                    uid = "ffn." + ".".join(map(str, result.coords[s, slot].tolist()))
                    assert uid in alive_uids, f"dead expert {uid} answered"
                    torch.testing.assert_close(
                        result.outputs[s, slot], local[uid](x[s : s + 1])[0], atol=1e-5, rtol=0
                    )
            logits = layer.proj(x).split(GRID, dim=-1)
            scores = sum(lg.gather(1, result.coords[:, :, d].clamp(min=0)) for d, lg in enumerate(logits))
            weights = torch.nan_to_num(torch.softmax(scores.masked_fill(~result.mask, float("-inf")), dim=1))
            torch.testing.assert_close(
                output, (weights[:, :, None] * result.outputs).sum(1).detach(), atol=1e-5, rtol=0
            )
            for i, server in enumerate(servers):
                if i not in dead:
                    await server.shutdown()

        sim.run(main())
        sim.loop.run_until_complete(asyncio.sleep(0))
