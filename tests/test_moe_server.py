"""Expert servers over TCP and in simulation: autograd through the network, batching, bad input."""

from __future__ import annotations

import asyncio
import copy
import re

import pytest
import torch

from hivemind_core.moe.client import RemoteExpert
from hivemind_core.moe.declare import find_experts
from hivemind_core.moe.server import ExpertBackend, ExpertServer, TensorSpec
from hivemind_core.moe.tensors import serialize_tensors
from hivemind_core.net import RemoteError

pytestmark = pytest.mark.asyncio

HID = 16


def backends(pattern_count: int = 2, hid: int = HID) -> list[ExpertBackend]:
    return [ExpertBackend.create(f"ffn.{i}", "ffn", hid, seed=i) for i in range(pattern_count)]


async def test_remote_expert_matches_the_local_module_and_trains(world) -> None:
    hosted = backends()
    reference = copy.deepcopy(hosted[1].module)
    before = [p.detach().clone() for p in hosted[1].module.parameters()]
    server = await world.expert_server(hosted)
    client = await world.moe_client([server.endpoint])
    expert = RemoteExpert("ffn.1", server.endpoint, client)
    x = torch.randn(6, HID)

    def train_step() -> tuple[torch.Tensor, torch.Tensor]:
        inputs = x.clone().requires_grad_()
        output = expert(inputs)
        (output * torch.arange(HID)).sum().backward()
        return output.detach(), inputs.grad

    output, grad = await world.run_trainer(train_step)
    local_inputs = x.clone().requires_grad_()
    local_output = reference(local_inputs)
    (local_output * torch.arange(HID)).sum().backward()
    torch.testing.assert_close(output, local_output.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, local_inputs.grad, atol=1e-5, rtol=0)
    after = list(hosted[1].module.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True)), (
        "backward must step the optimizer"
    )


async def test_concurrent_requests_are_batched(world) -> None:
    server = await world.expert_server(backends(), batch_wait=0.05)
    client = await world.moe_client([server.endpoint])
    inputs = [torch.randn(4, HID) for _ in range(8)]
    outputs = await asyncio.gather(
        *(client.forward("ffn.0", server.endpoint, [x], timeout=10) for x in inputs)
    )
    pool = server.forward_pools["ffn.0"]
    assert pool.requests == 8 and pool.batches < 8, (pool.requests, pool.batches)
    local = server.backends["ffn.0"].forward([torch.cat(inputs)])[0]
    torch.testing.assert_close(torch.cat([o[0] for o in outputs]), local, atol=1e-5, rtol=0)


async def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(world) -> None:
    server = await world.expert_server(
        backends(),
    )
    client = await world.moe_client([server.endpoint])
    rpc, endpoint = client.rpc, server.endpoint
    big = server.backends["ffn.0"].max_batch_size + 1
    nan = torch.randn(2, HID)
    nan[1, 3] = float("nan")
    cases = [
        (
            ["ffn.0", serialize_tensors([torch.randn(2, HID + 1)]), "none"],
            "input 0 of ffn.0 must have shape [batch, 16]",
        ),
        (
            ["ffn.0", serialize_tensors([torch.randn(2, HID).double()]), "none"],
            "input 0 of ffn.0 must be torch.float32",
        ),
        (
            ["ffn.0", serialize_tensors([torch.randn(big, HID)]), "none"],
            f"batch of {big} exceeds ffn.0's max_batch_size",
        ),
        (
            ["ffn.9", serialize_tensors([torch.randn(2, HID)]), "none"],
            "no expert 'ffn.9' on this server; it hosts: ffn.0, ffn.1",
        ),
        (["ffn.0", serialize_tensors([nan]), "none"], "input 0 of ffn.0 contains NaN or infinite values"),
        (
            ["ffn.0", serialize_tensors([torch.randn(2, HID), torch.randn(2, HID)]), "none"],
            "ffn.0 takes 1 input, got 2",
        ),
        (["ffn.0", [["float32", [2], "none", b"xx", b""]], "none"], "tensor 0"),
        (["ffn.0", serialize_tensors([torch.randn(2, HID)]), "zip"], "'zip' is not a valid Compression"),
        ("not a list", "forward body must be [uid, inputs, compression]"),
    ]
    for body, message in cases:
        with pytest.raises(RemoteError, match=re.escape(message)):
            await rpc.call(endpoint, "moe.forward", body, timeout=10)
        healthy = await client.forward("ffn.1", endpoint, [torch.randn(3, HID)], timeout=10)
        assert healthy[0].shape == (3, HID)
    with pytest.raises(RemoteError, match=re.escape("grad_output 0 of ffn.0 must have shape [batch, 16]")):
        await client.backward("ffn.0", endpoint, [torch.randn(2, HID)], [torch.randn(2, 3)], timeout=10)


async def test_experts_are_announced_in_the_dht(world) -> None:
    server = await world.expert_server(backends(3))
    client = await world.moe_client([server.endpoint])
    found = await find_experts(client.dht, ["ffn.0", "ffn.2", "ffn.7"])
    assert found == {"ffn.0": server.endpoint, "ffn.2": server.endpoint, "ffn.7": None}
    children = await client.dht.get("ffn.")
    assert children is not None and sorted(children.value) == [0, 1, 2]


async def test_checkpoints_restore_parameters_and_optimizer_state(world, tmp_path) -> None:
    hosted = backends(1)
    server = await world.expert_server(hosted, checkpoint_dir=tmp_path)
    client = await world.moe_client([server.endpoint])
    await client.backward("ffn.0", server.endpoint, [torch.randn(4, HID)], [torch.randn(4, HID)], timeout=10)
    await server.save_checkpoints()
    trained = copy.deepcopy(hosted[0].state_dict())
    fresh = ExpertBackend.create("ffn.0", "ffn", HID, seed=99)
    restored = ExpertServer([fresh], rpc=server.rpc, executor=world.executor(), checkpoint_dir=tmp_path)
    assert await restored.load_checkpoints() == 1
    for name, tensor in trained["module"].items():
        torch.testing.assert_close(fresh.module.state_dict()[name], tensor)
    assert fresh.optimizer.state_dict()["state"][0]["step"] == trained["optimizer"]["state"][0]["step"]


async def test_custom_modules_declare_their_schema() -> None:
    module = torch.nn.Bilinear(3, 4, 5)
    backend = ExpertBackend(
        "bilinear.0", module, inputs=[TensorSpec((3,), torch.float32), TensorSpec((4,), torch.float32)]
    )
    assert backend.info() == {
        "inputs": [[[3], "float32"], [[4], "float32"]],
        "outputs": [[[5], "float32"]],
        "max_batch_size": 4096,
    }
    with pytest.raises(ValueError, match="invalid expert UID"):
        ExpertBackend("not a uid", module, inputs=[])
