"""The DMoE layer and remote experts on the input's device: outputs and gradients come back
where the inputs live, whatever device the servers compute on. CUDA cases run where torch
sees a GPU and are skipped elsewhere (``benchmarks/device_check.py`` runs them on a lent GPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from hivemind_core.moe.client import MoEConfig, RemoteExpert, RemoteMixtureOfExperts
from hivemind_core.moe.server import ExpertBackend
from hivemind_core.moe.uid import expand_pattern

HID = 8
GRID = (2, 2)
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device here")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_CUDA)]


async def servers_on(world, device: str) -> dict[str, torch.nn.Module]:
    """The 2x2 grid on two servers computing on ``device``; CPU copies of every expert."""
    backends = [
        ExpertBackend.create(uid, "ffn", HID, seed=i, device=device)
        for i, uid in enumerate(expand_pattern("ffn.[0:2].[0:2]"))
    ]
    local = {b.uid: copy.deepcopy(b.module).cpu() for b in backends}
    first = await world.expert_server(backends[0::2])
    await world.expert_server(backends[1::2], [first.endpoint])
    return local


@pytest.mark.asyncio(loop_factories=["tcp"])
@pytest.mark.parametrize("client_device", DEVICES)
@pytest.mark.parametrize("server_device", DEVICES)
async def test_the_mixture_answers_on_the_inputs_device(
    world, client_device: str, server_device: str
) -> None:
    local = await servers_on(world, server_device)
    client = await world.moe_client([world.servers[0].endpoint])
    torch.manual_seed(0)
    layer = RemoteMixtureOfExperts(
        MoEConfig(in_features=HID, grid_size=GRID, uid_prefix="ffn", k_best=4), client=client
    ).to(client_device)
    x = torch.randn(6, HID, device=client_device, requires_grad=True)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        out = layer(x)
        out.square().mean().backward()
        return out, x.grad

    out, grad = await world.run_trainer(step)
    assert out.device.type == grad.device.type == layer.proj.weight.grad.device.type == client_device
    # every expert answers (k_best = the grid): the same mixture as the CPU copies give
    logits = layer.proj.cpu()(x.detach().cpu()).split(GRID, dim=-1)
    coords = [(i, j) for i in range(2) for j in range(2)]
    scores = torch.stack([logits[0][:, i] + logits[1][:, j] for i, j in coords], dim=1)
    outputs = torch.stack([local[f"ffn.{i}.{j}"](x.detach().cpu()) for i, j in coords], dim=1)
    expected = (torch.softmax(scores, 1)[..., None] * outputs).sum(1)
    torch.testing.assert_close(out.detach().cpu(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.asyncio(loop_factories=["tcp"])
@pytest.mark.parametrize("device", DEVICES)
async def test_one_remote_expert_answers_on_the_inputs_device(world, device: str) -> None:
    local = await servers_on(world, "cpu")
    client = await world.moe_client([world.servers[0].endpoint])
    expert = RemoteExpert("ffn.0.0", world.servers[0].endpoint, client)
    x = torch.randn(3, HID, device=device, requires_grad=True)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        out = expert(x)
        out.sum().backward()
        return out, x.grad

    out, grad = await world.run_trainer(step)
    assert out.device.type == grad.device.type == device
    torch.testing.assert_close(out.detach().cpu(), local["ffn.0.0"](x.detach().cpu()), rtol=1e-4, atol=1e-5)
