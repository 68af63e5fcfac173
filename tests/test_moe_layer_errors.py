"""The DMoE layer's edges: argument checks, empty batches, which failures it absorbs and which
it raises, what it counts and warns about, and that a cancelled step bans nobody."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
import torch

from hivemind_core.moe.client import ExpertsUnavailable, MalformedResponse, MoEConfig, RemoteMixtureOfExperts
from hivemind_core.moe.server import ExpertBackend
from hivemind_core.moe.uid import expand_pattern
from hivemind_core.net import RemoteError

pytestmark = pytest.mark.asyncio

HID = 8
GRID = (2, 3)


async def grid_of_servers(world, servers: int = 2):
    uids = expand_pattern("ffn.[0:2].[0:3]")
    hosted = [ExpertBackend.create(uid, "ffn", HID, seed=i) for i, uid in enumerate(uids)]
    first = await world.expert_server(hosted[0::servers])
    for i in range(1, servers):
        await world.expert_server(hosted[i::servers], [first.endpoint])
    return await world.moe_client([first.endpoint])


def make_layer(client, **options) -> RemoteMixtureOfExperts:
    options = {"in_features": HID, "grid_size": GRID, "uid_prefix": "ffn", "k_best": 3, **options}
    return RemoteMixtureOfExperts(MoEConfig(**options), client=client)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_searches": 0}, "max_searches must be an int >= 1, got 0"),
        ({"beam_size": 0}, "beam_size must be an int >= 1, got 0"),
        ({"k_best": 0, "k_min": 0}, "k_best must be an int >= 1, got 0"),
        ({"k_min": 4}, "k_min must be an int with 0 <= k_min <= k_best=3, got 4"),
        ({"k_min": -1}, "k_min must be an int with 0 <= k_min <= k_best=3, got -1"),
        ({"in_features": 0}, "in_features must be an int >= 1, got 0"),
        ({"grid_size": ()}, "grid_size must be a non-empty sequence"),
        ({"grid_size": (2, 0)}, r"grid_size\[1\] must be an int >= 1, got 0"),
        ({"grid_size": (2.0, 3)}, r"grid_size\[0\] must be an int >= 1, got 2.0"),
        ({"uid_prefix": "not a grid"}, "uid_prefix must be a grid name"),
        ({"output_shape": (-1,)}, "output_shape must be a sequence of ints >= 0"),
        ({"forward_timeout": 0}, "forward_timeout must be a finite positive number"),
        ({"backward_timeout": float("nan")}, "backward_timeout must be a finite positive number"),
        ({"timeout_after_k_min": -1}, "timeout_after_k_min must be a finite positive number"),
    ],
)
@pytest.mark.asyncio(loop_factories=["sim"])
async def test_every_argument_is_validated(world, options: dict, message: str) -> None:
    client = await world.moe_client([])
    with pytest.raises(ValueError, match=message):
        make_layer(client, **options)


async def test_the_config_is_frozen_with_tuples_and_the_layer_takes_nothing_else() -> None:
    config = MoEConfig(in_features=HID, grid_size=[2, 3], uid_prefix="ffn", k_best=3, output_shape=[HID])
    assert config.grid_size == (2, 3) and config.output_shape == (HID,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.k_min = 2  # type: ignore[misc]
    with pytest.raises(TypeError, match="config must be a MoEConfig"):
        RemoteMixtureOfExperts({"in_features": HID}, client=None)  # type: ignore[arg-type]


async def test_inputs_of_the_wrong_shape_are_clear_errors(world) -> None:
    client = await world.moe_client([])
    layer = make_layer(client)
    for x in (torch.tensor(1.0), torch.zeros(HID), torch.zeros(4, HID + 1)):
        with pytest.raises(ValueError, match=r"expected inputs of shape \[batch, ..., in_features=8\]"):
            await world.run_trainer(lambda x=x: layer(x))


async def test_an_empty_batch_gives_an_empty_output_and_backward_works(world) -> None:
    client = await grid_of_servers(world)
    layer = make_layer(client)
    x = torch.zeros(0, HID, requires_grad=True)

    def step() -> tuple[torch.Size, torch.Tensor | None]:
        output = layer(x)
        output.sum().backward()
        return output.shape, x.grad

    shape, grad = await world.run_trainer(step)
    assert shape == (0, HID)
    assert grad is not None and grad.shape == (0, HID)
    assert layer.stats.forward_calls == 0 and layer.stats.searches == 0


async def test_a_bug_in_this_process_raises_instead_of_being_taken_for_a_dead_expert(world) -> None:
    client = await grid_of_servers(world)
    layer = make_layer(client)

    async def buggy_forward(*args, **options):  # type: ignore[no-untyped-def]
        raise TypeError("a bug in the client")

    client.forward = buggy_forward  # type: ignore[method-assign]
    with pytest.raises(TypeError, match="a bug in the client"):
        await world.run_trainer(lambda: layer(torch.randn(4, HID)))
    assert not any(client.is_banned(server.endpoint) for server in world.servers)


async def test_remote_failures_and_bad_answers_skip_the_expert_and_are_counted(world) -> None:
    client = await grid_of_servers(world, servers=3)  # a bad answer bans its server: two others left
    layer = make_layer(client, k_min=3)
    real_forward = client.forward

    async def flaky_forward(uid, endpoint, inputs, *, timeout):  # type: ignore[no-untyped-def]
        outputs = await real_forward(uid, endpoint, inputs, timeout=timeout)
        if uid == "ffn.0.0":
            raise RemoteError("injected", remote_type="RuntimeError")
        if uid == "ffn.0.1":
            return [outputs[0][:, :3]]  # a server answering with the wrong sample shape
        return outputs

    client.forward = flaky_forward  # type: ignore[method-assign]
    x = torch.randn(6, HID)
    logits = [torch.tensor([[9.0, 0.0]] * 6), torch.tensor([[9.0, 8.0, 7.0]] * 6)]  # every sample picks row 0
    result = await world.run_trainer(lambda: client.bridge.run(layer._forward_all(x, logits)))
    assert result.mask.all(), "the retry found three answering experts for every sample"
    chosen = {"ffn." + ".".join(map(str, c.tolist())) for c in result.coords.flatten(0, 1)}
    assert chosen == {"ffn.0.2", "ffn.1.0", "ffn.1.2"}
    # the retry tries twice as many experts per missing answer: the two left off ffn.0.1's banned server
    assert layer.stats.forward_calls == 3 + 2 and layer.stats.searches == 2
    assert client.is_banned(world.servers[1].endpoint) and client.bans == 1, "the bad answer banned it"
    assert layer.stats.forward_failures == 2
    assert layer.stats.expert_failures == {"ffn.0.0": 1, "ffn.0.1": 1}
    assert issubclass(MalformedResponse, ValueError)


async def test_backward_failures_are_counted_and_warned_once_per_expert_per_ban_period(world, caplog) -> None:
    client = await grid_of_servers(world)
    layer = make_layer(client, k_best=6)
    real_backward = client.backward

    async def failing_backward(uid, *args, **options):  # type: ignore[no-untyped-def]
        if uid == "ffn.1.2":
            raise RemoteError("injected", remote_type="RuntimeError")
        return await real_backward(uid, *args, **options)

    client.backward = failing_backward  # type: ignore[method-assign]
    x = torch.randn(5, HID)

    def step() -> None:
        layer(x).pow(2).mean().backward()

    with caplog.at_level(logging.WARNING, logger="hivemind_core.moe.client.moe"):
        for _ in range(3):
            await world.run_trainer(step)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "ffn.1.2" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert layer.stats.backward_failures == 3 and layer.stats.backward_calls == 18
    assert layer.stats.expert_failures == {"ffn.1.2": 3}


async def test_a_cancelled_step_bans_nobody_but_a_missed_deadline_does(world) -> None:
    client = await grid_of_servers(world)
    in_flight = asyncio.Event()

    async def frozen_forward(*args, **options):  # type: ignore[no-untyped-def]
        in_flight.set()
        await asyncio.Event().wait()  # a server that never answers

    client.forward = frozen_forward  # type: ignore[method-assign]
    layer = make_layer(client, forward_timeout=2.0, max_searches=1)
    logits = [torch.zeros(3, size) for size in GRID]
    step = asyncio.get_running_loop().create_task(layer._forward_all(torch.randn(3, HID), logits))
    await in_flight.wait()
    step.cancel()
    with pytest.raises(asyncio.CancelledError):
        await step
    endpoints = [server.endpoint for server in world.servers]
    assert not any(client.is_banned(endpoint) for endpoint in endpoints), "a cancelled step banned servers"

    with pytest.raises(ExpertsUnavailable, match="no answer in time"):
        await layer._forward_all(torch.randn(3, HID), logits)
    assert all(client.is_banned(endpoint) for endpoint in endpoints)
    await client.close()
