"""The DMoE layer, over TCP and in simulation: exact against a local mixture, and fault tolerant."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch

from hivemind_core.moe.client import ExpertsUnavailable, MoEConfig, RemoteMixtureOfExperts
from hivemind_core.moe.server import ExpertBackend
from hivemind_core.moe.uid import expand_pattern

pytestmark = pytest.mark.asyncio

HID = 12
GRID = (3, 4)


async def grid_of_servers(world, servers: int = 3, dtype: torch.dtype = torch.float32):
    """The 3x4 grid of ffn experts spread over ``servers`` servers, plus local copies of each."""
    uids = expand_pattern("ffn.[0:3].[0:4]")
    hosted = [ExpertBackend.create(uid, "ffn", HID, seed=i, dtype=dtype) for i, uid in enumerate(uids)]
    local = {b.uid: copy.deepcopy(b.module) for b in hosted}
    first = await world.expert_server(hosted[0::servers])
    rest = [await world.expert_server(hosted[i::servers], [first.endpoint]) for i in range(1, servers)]
    return [first, *rest], local


def local_mixture(
    layer: RemoteMixtureOfExperts, local: dict, x: torch.Tensor, gate: torch.nn.Linear, chosen: list[list]
) -> torch.Tensor:
    """What the layer must compute: the softmax-weighted mixture of the chosen experts, locally."""
    logits = gate(x).split(GRID, dim=-1)
    rows = []
    for s, choices in enumerate(chosen):
        scores = torch.stack([sum(logits[d][s, c.coords[d]] for d in range(len(GRID))) for c in choices])
        outputs = torch.stack([local[c.uid](x[s : s + 1])[0] for c in choices])
        rows.append((torch.softmax(scores, 0)[:, None] * outputs).sum(0))
    return torch.stack(rows)


# float64 shows the computation is exact; float32 that its rounding stays within 1e-5 (float32
# itself differs from float64 by ~1e-5 on gate gradients of a summed loss, so the float32 case
# uses a mean loss to keep gradients at their usual scale).
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
async def test_output_and_gradients_equal_a_local_mixture(
    world, dtype: torch.dtype, tolerance: float
) -> None:
    _, local = await grid_of_servers(world, dtype=dtype)
    client = await world.moe_client([world.servers[0].endpoint])
    torch.manual_seed(0)
    layer = RemoteMixtureOfExperts(
        MoEConfig(in_features=HID, grid_size=GRID, uid_prefix="ffn", k_best=4), client=client
    ).to(dtype)
    gate = copy.deepcopy(layer.proj)
    x = torch.randn(10, HID, dtype=dtype)
    target = torch.randn(10, HID, dtype=dtype)
    reduce = torch.sum if dtype == torch.float64 else torch.mean

    def remote() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list]:
        inputs = x.clone().requires_grad_()
        logits = [lg.detach() for lg in layer.proj(inputs).split(GRID, dim=-1)]
        chosen = client.bridge.run(layer.searcher.search(logits, 4))
        output = layer(inputs)
        reduce((output - target) ** 2).backward()
        return (
            output.detach(),
            inputs.grad,
            layer.proj.weight.grad.clone(),
            layer.proj.bias.grad.clone(),
            chosen,
        )

    output, grad_x, grad_weight, grad_bias, chosen = await world.run_trainer(remote)
    assert all(len(c) == 4 for c in chosen)
    inputs = x.clone().requires_grad_()
    expected = local_mixture(layer, local, inputs, gate, chosen)
    reduce((expected - target) ** 2).backward()
    for remote_value, local_value in [
        (output, expected.detach()),
        (grad_x, inputs.grad),
        (grad_weight, gate.weight.grad),
        (grad_bias, gate.bias.grad),
    ]:
        torch.testing.assert_close(remote_value, local_value, atol=tolerance, rtol=0)


async def test_dead_experts_are_dropped_and_the_rest_averaged(world) -> None:
    servers, local = await grid_of_servers(world)
    client = await world.moe_client([servers[0].endpoint])
    torch.manual_seed(1)
    layer = RemoteMixtureOfExperts(
        MoEConfig(
            in_features=HID,
            grid_size=GRID,
            uid_prefix="ffn",
            k_best=4,
            k_min=1,
            forward_timeout=2.0,
            timeout_after_k_min=0.5,
        ),
        client=client,
    )
    gate = copy.deepcopy(layer.proj)
    x = torch.randn(8, HID)
    logits = [lg.detach() for lg in layer.proj(x).split(GRID, dim=-1)]
    chosen = await world.run_trainer(lambda: client.bridge.run(layer.searcher.search(logits, 4)))
    dead = servers[1]
    await dead.shutdown()  # stops answering; its DHT entries remain until they expire
    await world.dht_nodes[1].shutdown()
    survivors = [[c for c in choices if c.endpoint != dead.endpoint] for choices in chosen]
    assert any(len(s) < 4 for s in survivors), "the dead server must have been among the choices"

    output = await world.run_trainer(lambda: layer(x).detach())
    expected = local_mixture(layer, local, x, gate, survivors)
    torch.testing.assert_close(output, expected.detach(), atol=1e-5, rtol=0)


async def test_too_few_answers_is_a_clear_error_and_a_fresh_search_finds_others(world) -> None:
    servers, _ = await grid_of_servers(world)
    client = await world.moe_client([servers[0].endpoint])
    layer = RemoteMixtureOfExperts(
        MoEConfig(
            in_features=HID,
            grid_size=GRID,
            uid_prefix="ffn",
            k_best=12,
            k_min=12,
            forward_timeout=2.0,
            max_searches=2,
        ),
        client=client,
    )
    x = torch.randn(4, HID)
    assert (await world.run_trainer(lambda: layer(x))).shape == (4, HID)
    for server in servers[1:]:
        await server.shutdown()
    with pytest.raises(
        ExpertsUnavailable, match=r"only 4 of k_min=12 experts answered for 4 sample\(s\) after 2"
    ):
        await world.run_trainer(lambda: layer(x))
    # with k_min=4 the experts of the surviving server suffice: the failed ones are searched around
    layer.config = dataclasses.replace(layer.config, k_min=4)
    output = await world.run_trainer(lambda: layer(x))
    assert output.shape == (4, HID) and torch.isfinite(output).all()


async def test_beam_search_returns_the_best_alive_experts(world) -> None:
    servers, _ = await grid_of_servers(world)
    client = await world.moe_client([servers[0].endpoint])
    layer = RemoteMixtureOfExperts(
        MoEConfig(in_features=HID, grid_size=GRID, uid_prefix="ffn", k_best=5), client=client
    )
    torch.manual_seed(3)
    logits = [torch.randn(6, size) for size in GRID]
    alive = {uid for server in servers[:2] for uid in server.backends}
    await servers[2].shutdown()
    chosen = await world.run_trainer(
        lambda: client.bridge.run(
            layer.searcher.search(logits, 5, beam_size=12, exclude=set(servers[2].backends))
        )
    )
    for s, choices in enumerate(chosen):
        every = sorted(
            ((logits[0][s, i] + logits[1][s, j]).item(), f"ffn.{i}.{j}")
            for i, j in itertools.product(range(3), range(4))
            if f"ffn.{i}.{j}" in alive
        )
        assert [c.uid for c in choices] == [uid for _, uid in reversed(every)][:5]


async def test_timeouts_must_be_finite(world) -> None:
    client = await world.moe_client([])
    with pytest.raises(ValueError, match="forward_timeout must be a finite positive number"):
        RemoteMixtureOfExperts(
            MoEConfig(
                in_features=4, grid_size=(2,), uid_prefix="ffn", k_best=1, forward_timeout=float("inf")
            ),
            client=client,
        )


async def test_excluded_experts_never_crowd_out_the_remaining_ones(world) -> None:
    servers, _ = await grid_of_servers(world)
    client = await world.moe_client([servers[0].endpoint])
    layer = RemoteMixtureOfExperts(
        MoEConfig(in_features=HID, grid_size=GRID, uid_prefix="ffn", k_best=2), client=client
    )
    logits = [torch.tensor([[9.0, 1.0, 0.0]]), torch.tensor([[4.0, 3.0, 2.0, 1.0]])]
    row_zero = {f"ffn.0.{j}" for j in range(4)}  # the best-scored row, and the beam's top two: excluded
    chosen = await world.run_trainer(
        lambda: client.bridge.run(layer.searcher.search(logits, 2, beam_size=2, exclude=row_zero))
    )
    assert [c.uid for c in chosen[0]] == ["ffn.1.0", "ffn.1.1"]
