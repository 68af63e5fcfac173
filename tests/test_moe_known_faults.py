"""Failing and misbehaving experts (issue 14, items 7-9), over TCP and in simulation.

A batch that breaks fails alone and the expert keeps serving, and its queue is bounded; an
expert merely slower than the others is dropped, not banned; NaN answers ban their server, and
finite junk is caught by comparing the answers to each sample and never reaches the output.
"""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch
from torch import nn

from hivemind_core.moe.client import ExpertsUnavailable, MoEConfig, RemoteMixtureOfExperts
from hivemind_core.moe.client.outliers import NormCheck
from hivemind_core.moe.client.stats import ExpertCall
from hivemind_core.moe.server import ExpertBackend, TensorSpec
from hivemind_core.moe.server.batching import PoolFull, TaskPool
from hivemind_core.moe.uid import expand_pattern
from hivemind_core.net import RemoteError, RequestTimeout
from hivemind_sim.scenario.format.loader import parse_scenario
from hivemind_sim.scenario.run.runner import run_scenario
from hivemind_sim.swarms.faults import misbehave

HID = 8
GRID = (2, 3)
MARK = 42.0


class DropsARow(nn.Module):
    """A linear expert whose batch breaks when its first value is ``MARK``: it answers one row
    short, as a buggy expert might, which the pool only notices when it slices the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(HID, HID)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y[1:] if x.shape[0] > 1 and x[0, 0] == MARK else y


@pytest.mark.asyncio
async def test_a_batch_that_breaks_fails_with_a_clear_error_and_the_expert_keeps_serving(world) -> None:
    backend = ExpertBackend("ffn.0", DropsARow(), inputs=[TensorSpec((HID,), torch.float32)])
    server = await world.expert_server([backend])
    client = await world.moe_client([server.endpoint])
    bad = torch.randn(3, HID)
    bad[0, 0] = MARK
    with pytest.raises(
        RemoteError, match=r"ffn.0.forward failed on this batch: .*\[2\] rows for a batch of 3"
    ):
        await client.forward("ffn.0", server.endpoint, [bad], timeout=2)
    good = torch.randn(4, HID)
    (output,) = await client.forward("ffn.0", server.endpoint, [good], timeout=2)
    torch.testing.assert_close(output, backend.module(good).detach())
    assert server.forward_pools["ffn.0"].failed_batches == 1


@pytest.mark.asyncio
async def test_a_full_queue_refuses_at_once_and_the_queued_requests_are_served(world) -> None:
    backend = ExpertBackend.create("ffn.0", "ffn", HID, seed=0)
    executor = world.executor()
    pool = TaskPool(
        "ffn.0.forward",
        backend.forward,
        executor=executor,
        max_batch_size=2,
        max_wait=0.0,
        flops_per_sample=backend.flops_per_sample,
        max_queued=4,
    )
    inputs = [torch.randn(1, HID) for _ in range(10)]
    # all ten are submitted before the runner takes its first batch
    outcomes = await asyncio.gather(*(pool.submit([x]) for x in inputs), return_exceptions=True)
    served = [i for i, outcome in enumerate(outcomes) if not isinstance(outcome, BaseException)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, PoolFull)]
    assert served == [0, 1, 2, 3] and len(refused) == 6, outcomes
    assert "ffn.0.forward is overloaded: 4 samples queued, the limit is 4" in str(refused[0])
    for i in served:
        torch.testing.assert_close(outcomes[i][0], backend.forward([inputs[i]])[0])
    assert pool.refused == 6 and pool.queued_samples == 0
    (again,) = await pool.submit([inputs[9]])  # room again once the queue drained
    torch.testing.assert_close(again, backend.forward([inputs[9]])[0])
    await pool.close()
    await executor.close()
    with pytest.raises(ValueError, match="must hold a full batch"):
        TaskPool(
            "p",
            backend.forward,
            executor=executor,
            max_batch_size=4,
            max_wait=0,
            flops_per_sample=1,
            max_queued=3,
        )


async def grid(world, servers: int) -> tuple[list, dict[str, nn.Module]]:
    """The 2x3 ffn grid spread over ``servers`` servers, and local copies of every expert."""
    hosted = [
        ExpertBackend.create(uid, "ffn", HID, seed=i)
        for i, uid in enumerate(expand_pattern("ffn.[0:2].[0:3]"))
    ]
    local = {b.uid: copy.deepcopy(b.module) for b in hosted}
    first = await world.expert_server(hosted[0::servers])
    for i in range(1, servers):
        await world.expert_server(hosted[i::servers], [first.endpoint])
    return world.servers, local


def layer_of(client, calls: list[ExpertCall], **options) -> RemoteMixtureOfExperts:
    options = {"in_features": HID, "grid_size": GRID, "uid_prefix": "ffn", "k_best": 6, **options}
    layer = RemoteMixtureOfExperts(MoEConfig(**options), client=client)
    layer.stats.observer = calls.append
    return layer


@pytest.mark.asyncio
async def test_experts_slower_than_the_first_k_min_are_dropped_not_banned_but_frozen_ones_are(world) -> None:
    servers, _ = await grid(world, 3)
    client = await world.moe_client([servers[0].endpoint])
    slow, frozen = set(servers[1].backends), set(servers[2].backends)
    real_forward, real_info = client.forward, client.info

    async def forward(uid, endpoint, inputs, *, timeout):  # type: ignore[no-untyped-def]
        if uid in slow | frozen:  # still working (or never will): slower than the first server
            await asyncio.Event().wait()
        return await real_forward(uid, endpoint, inputs, timeout=timeout)

    async def info(uid, endpoint, *, timeout):  # type: ignore[no-untyped-def]
        if uid in frozen:  # a frozen server answers nothing, not even a cheap request
            await asyncio.sleep(timeout)
            raise RequestTimeout(f"no response from {endpoint} within {timeout} s")
        return await real_info(uid, endpoint, timeout=timeout)

    client.forward, client.info = forward, info  # type: ignore[method-assign]
    calls: list[ExpertCall] = []
    layer = layer_of(client, calls, k_min=1, forward_timeout=10.0, timeout_after_k_min=0.2)
    logits = [torch.zeros(4, size) for size in GRID]
    result = await layer._forward_all(torch.randn(4, HID), logits)
    assert result.mask.sum(1).tolist() == [2, 2, 2, 2], "the first server's two experts answered"
    assert not client.is_banned(servers[1].endpoint), "a slow but alive server was banned"
    assert client.is_banned(servers[2].endpoint) and client.bans == 1, "the frozen server was not banned"
    assert layer.stats.late == 2 and layer.stats.forward_failures == 2
    assert set(layer.stats.expert_failures) == frozen
    outcomes = sorted((call.outcome, call.uid) for call in calls)
    assert [outcome for outcome, _ in outcomes] == ["answered"] * 2 + ["failed"] * 2 + ["late"] * 2


@pytest.mark.asyncio
async def test_nan_answers_are_failures_that_ban_their_server(world) -> None:
    servers, _ = await grid(world, 2)
    client = await world.moe_client([servers[0].endpoint])
    misbehave(servers[1], output="nan")
    calls: list[ExpertCall] = []
    layer = layer_of(client, calls, k_min=1)
    result = await world.run_trainer(
        lambda: client.bridge.run(
            layer._forward_all(torch.randn(5, HID), [torch.zeros(5, size) for size in GRID])
        )
    )
    assert result.mask.sum(1).tolist() == [3] * 5
    assert layer.stats.forward_failures == 3 and set(layer.stats.expert_failures) == set(servers[1].backends)
    assert client.is_banned(servers[1].endpoint) and not client.is_banned(servers[0].endpoint)
    assert client.bans == 1, "one ban for the server, however many of its experts answered NaN"
    picks = await layer.searcher.search([torch.zeros(1, size) for size in GRID], 6)
    assert {c.endpoint for c in picks[0]} == {servers[0].endpoint}, "banned: its experts are not chosen"


@pytest.mark.asyncio
async def test_garbage_answers_are_rejected_counted_banned_and_left_out_of_the_output(world) -> None:
    servers, local = await grid(world, 3)  # two experts on each server
    client = await world.moe_client([servers[0].endpoint])
    misbehave(servers[2], output="garbage")  # finite, the right shape, a million times too large
    calls: list[ExpertCall] = []
    layer = layer_of(client, calls, k_min=1)
    x = torch.randn(5, HID)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        inputs = x.clone().requires_grad_()
        output = layer(inputs)
        output.pow(2).mean().backward()
        return output.detach(), inputs.grad

    output, grad = await world.run_trainer(step)
    junk = set(servers[2].backends)
    assert layer.stats.rejected == 2 and set(layer.stats.expert_failures) == junk
    assert sorted(c.uid for c in calls if c.outcome == "rejected") == sorted(junk)
    assert client.is_banned(servers[2].endpoint) and client.bans == 1
    # the output is the gate-weighted mixture of the four honest answers, weights renormalized
    logits = layer.proj(x).split(GRID, dim=-1)
    honest = [uid for uid in expand_pattern("ffn.[0:2].[0:3]") if uid not in junk]
    scores = torch.stack(
        [logits[0][:, int(u.split(".")[1])] + logits[1][:, int(u.split(".")[2])] for u in honest], 1
    )
    answers = torch.stack([local[uid](x) for uid in honest], 1)
    expected = (torch.softmax(scores, 1)[..., None] * answers).sum(1)
    torch.testing.assert_close(output, expected.detach(), atol=1e-5, rtol=0)
    assert grad.abs().max() < 10, "backward reached only the honest experts"


@pytest.mark.asyncio
async def test_too_few_answers_left_after_rejection_fail_the_forward(world) -> None:
    servers, _ = await grid(world, 3)
    client = await world.moe_client([servers[0].endpoint])
    misbehave(servers[2], output="garbage")
    layer = layer_of(client, [], k_min=5, max_searches=1)
    logits = [torch.zeros(3, size) for size in GRID]
    with pytest.raises(ExpertsUnavailable, match=r"only 4 of k_min=5 .*answer rejected: its norm"):
        await world.run_trainer(lambda: client.bridge.run(layer._forward_all(torch.randn(3, HID), logits)))
    fresh = await world.moe_client([servers[0].endpoint])  # nothing banned yet
    no_check = layer_of(fresh, [], k_min=5, answer_check=None)
    result = await world.run_trainer(
        lambda: fresh.bridge.run(no_check._forward_all(torch.randn(3, HID), logits))
    )
    assert result.mask.all() and no_check.stats.rejected == 0, "answer_check=None accepts finite junk"


def test_norm_check_rejects_only_outliers_and_validates_its_settings() -> None:
    check = NormCheck(factor=10)
    nan = float("nan")
    norms = torch.tensor(
        [
            [1.0, 1.2, 0.9, 1e6],  # one junk answer of four
            [1.0, 1e6, 2e6, 1.1],  # two of four: the lower median is still honest
            [1.0, 1e6, nan, nan],  # two answers that disagree: the batch's median (1.2) tells
            [40.0, 45.0, nan, nan],  # two that agree: a sample of another scale, not junk
            [60.0, nan, nan, nan],  # an only answer is not judged by other samples' answers
            [0.0, 0.0, 5.0, nan],  # a median of 0 gives no scale
            [1e6, 2e6, 3e6, 1.0],  # a majority of junk is not caught
        ]
    )
    assert check.outliers(norms, experts=4).tolist() == [
        [False, False, False, True],
        [False, True, True, False],
        [False, True, False, False],
        [False, False, False, False],
        [False, False, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ]
    # the state machine's case: the batch's median is small, two agreeing answers are not junk
    small_batch = torch.tensor([[0.1, 0.2, nan], [0.3, 0.2, 0.1], [4.63, 4.84, nan], [0.2, 0.1, nan]])
    assert not check.outliers(small_batch, experts=3).any()
    assert not check.outliers(torch.tensor([[1.0, 1e6]]), experts=2).any(), "two answers: nothing to judge by"
    # two experts answering a whole batch: eight answers, but nothing says which expert is junk
    # (two honest experts whose norms differed 10x were rejected in turn: the DMoE state machine)
    two_experts = torch.tensor([[1.0, 20.0], [1.2, 25.0], [0.9, 30.0], [1.1, 22.0]])
    assert not check.outliers(two_experts, experts=2).any()
    assert check.outliers(two_experts, experts=3)[:, 1].all(), "with a third expert in the batch, it is"
    for bad, message in (
        ({"factor": 1}, "factor must be a finite number > 1"),
        ({"factor": float("inf")}, "factor must be"),
        ({"min_answers": 2}, "min_answers must be an int >= 3"),
    ):
        with pytest.raises(ValueError, match=message):
            NormCheck(**bad)


HOSTILE = """\
schema_version: 1
name: hostile-experts
seed: 1
warmup: 5s
duration: 25s
sample_interval: 5s
peers:
  - group: servers
    role: server
    count: 6
    experts: 2
    link: {uplink: 100Mbit/s, downlink: 100Mbit/s, latency: 5ms}
  - group: trainers
    role: trainer
    count: 1
    link: {uplink: 50Mbit/s, downlink: 50Mbit/s, latency: 10ms}
events:
  - {name: nan, at: 0s, action: misbehave, output: nan, select: {peers: [servers-0]}}
  - {name: garbage, at: 0s, action: misbehave, output: garbage, select: {peers: [servers-1]}}
workload:
  training:
    model: {hidden_dim: 16, expert: ffn}
    grid: [4, 3]
    k_best: 4
    batch_size: 16
    optimizer: {name: adam, lr: 0.01}
"""


def test_a_scenario_with_nan_and_garbage_experts_counts_rejections_and_trains() -> None:
    summary = run_scenario(parse_scenario(HOSTILE, filename="hostile.yaml")).recorder.summary()
    assert summary["moe.rejected.total"] > 0 and summary["moe.bans.total"] >= 2, summary
    assert summary["moe.step.success_rate"] >= 0.95, summary
    assert summary["train.loss.final"] < summary["train.loss.first"] < 10, summary
