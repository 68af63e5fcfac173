"""Expert servers over TCP and in simulation: autograd through the network, batching, bad input."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import re

import pytest
import torch

from hivemind_core.moe.client import RemoteExpert
from hivemind_core.moe.declare import find_experts
from hivemind_core.moe.server import ComputeExecutor, ExpertBackend, ExpertServer, ServerConfig, TensorSpec
from hivemind_core.moe.server import server as server_module
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
    server = await world.expert_server(backends(), config=ServerConfig(batch_wait=0.05))
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
        (["ffn.0", serialize_tensors([nan]), "none"], "input 0 of ffn.0: contains NaN or infinite values"),
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
    marker = server.dht.identity.ownership_marker  # each coordinate is declared under its owner's key
    assert children is not None and sorted(children.value) == [(0, marker), (1, marker), (2, marker)]


async def test_checkpoints_restore_parameters_and_optimizer_state(world, tmp_path) -> None:
    hosted = backends(1)
    server = await world.expert_server(hosted, config=ServerConfig(checkpoint_dir=tmp_path))
    client = await world.moe_client([server.endpoint])
    await client.backward("ffn.0", server.endpoint, [torch.randn(4, HID)], [torch.randn(4, HID)], timeout=10)
    await server.save_checkpoints()
    trained = copy.deepcopy(hosted[0].state_dict())
    fresh = ExpertBackend.create("ffn.0", "ffn", HID, seed=99)
    restored = ExpertServer(
        [fresh], rpc=server.rpc, executor=world.executor(), config=ServerConfig(checkpoint_dir=tmp_path)
    )
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


class RecordingExecutor(ComputeExecutor):
    """Wraps a world's executor; ``inside`` is true while one of its functions runs."""

    def __init__(self, inner: ComputeExecutor) -> None:
        self.inner = inner
        self.inside = 0

    async def run(self, function, *, flops: float):  # type: ignore[no-untyped-def]
        def wrapped():  # type: ignore[no-untyped-def]
            self.inside += 1
            try:
                return function()
            finally:
                self.inside -= 1

        return await self.inner.run(wrapped, flops=flops)

    async def close(self) -> None:
        await self.inner.close()


def spy_on_decoding(monkeypatch, executor: RecordingExecutor) -> list[tuple[tuple[int, ...], bool]]:
    """(shape, on the executor?) of every tensor list the server decodes."""
    decoded: list[tuple[tuple[int, ...], bool]] = []
    real = server_module.decode_tensor

    def spy(raw, header, **options):  # type: ignore[no-untyped-def]
        tensor = real(raw, header, **options)
        decoded.append((tuple(tensor.shape), executor.inside > 0))
        return tensor

    monkeypatch.setattr(server_module, "decode_tensor", spy)
    return decoded


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_oversized_claims_are_refused_from_the_header_while_a_good_client_is_served(
    world, monkeypatch
) -> None:
    executor = RecordingExecutor(world.executor())
    node = await world.dht()
    server = ExpertServer(backends(), rpc=node.rpc, dht=node, executor=executor)
    await server.start()
    world.servers.append(server)
    decoded = spy_on_decoding(monkeypatch, executor)
    hostile = await world.rpc(serve=False)
    good = await world.moe_client([server.endpoint])
    rows = 200_000  # 12.8 MB of float32, all of it real bytes: the RPC layer refuses it unread
    just_over = 4097  # within the RPC size limit (it allows some slack): the header check refuses it

    def claim(batch: int) -> list:
        return ["ffn.0", [["float32", [batch, HID], "none", bytes(4 * batch * HID), b""]], "none"]

    async def attack() -> list[BaseException]:
        calls = [hostile.call(server.endpoint, "moe.forward", claim(rows), timeout=30) for _ in range(4)]
        calls.append(hostile.call(server.endpoint, "moe.forward", claim(just_over), timeout=30))
        return await asyncio.gather(*calls, return_exceptions=True)

    async def serve_well() -> int:
        for _ in range(20):
            (output,) = await good.forward("ffn.1", server.endpoint, [torch.randn(3, HID)], timeout=30)
            assert output.shape == (3, HID)
        return 20

    refusals, answered = await asyncio.gather(attack(), serve_well())
    assert answered == 20
    assert all(isinstance(refusal, RemoteError) for refusal in refusals), refusals
    for refusal in refusals[:4]:
        assert refusal.remote_type == "RequestTooLarge", refusal
        assert "a 'moe.forward' request may be" in str(refusal)
    assert f"batch of {just_over} exceeds ffn.0's max_batch_size of 4096" in str(refusals[4])
    assert all(shape[0] not in (rows, just_over) for shape, _ in decoded), (
        "a claim was decoded before refusal"
    )


async def test_large_payloads_are_decoded_on_the_executor(world, monkeypatch) -> None:
    executor = RecordingExecutor(world.executor())
    node = await world.dht()
    hid = 256
    hosted = [ExpertBackend.create("ffn.0", "ffn", hid, seed=0, max_batch_size=8192)]
    server = ExpertServer(hosted, rpc=node.rpc, dht=node, executor=executor)
    await server.start()
    world.servers.append(server)
    decoded = spy_on_decoding(monkeypatch, executor)
    client = await world.moe_client([server.endpoint])
    small, large = torch.randn(4, hid), torch.randn(2048, hid)  # 4 KiB and 2 MiB of float32
    for x in (small, large):
        (output,) = await client.forward("ffn.0", server.endpoint, [x], timeout=60)
        assert output.shape == x.shape
    assert decoded == [((4, hid), False), ((2048, hid), True)], decoded


async def test_scalar_and_empty_inputs_are_clear_errors_in_the_client(world) -> None:
    server = await world.expert_server(backends())
    client = await world.moe_client([server.endpoint])
    for inputs, message in [
        ([torch.tensor(1.0)], r"inputs\[0\] must be a tensor of shape \[batch, ...\]"),
        ([], "needs at least one tensor"),
        ([torch.zeros(2, HID), torch.zeros(3, HID)], "disagree on the batch size"),
    ]:
        with pytest.raises(ValueError, match=message):
            await client.forward("ffn.0", server.endpoint, inputs, timeout=10)
    with pytest.raises(ValueError, match=r"grad_outputs\[0\] must be a tensor of shape"):
        await client.backward(
            "ffn.0", server.endpoint, [torch.zeros(2, HID)], [torch.tensor(0.0)], timeout=10
        )
    expert = RemoteExpert("ffn.0", server.endpoint, client)
    with pytest.raises(ValueError, match=r"inputs\[0\] must be a tensor of shape \[batch, ...\]"):
        await world.run_trainer(lambda: expert(torch.tensor(1.0)))


async def test_remote_expert_arguments_are_validated(world) -> None:
    client = await world.moe_client([])
    for options, message in [
        ({"forward_timeout": 0}, "forward_timeout must be a finite positive number"),
        ({"backward_timeout": float("inf")}, "backward_timeout must be a finite positive number"),
        ({"forward_timeout": float("nan")}, "forward_timeout must be a finite positive number"),
    ]:
        with pytest.raises(ValueError, match=message):
            RemoteExpert("ffn.0", "peer:1", client, **options)
    with pytest.raises(ValueError, match="invalid expert UID"):
        RemoteExpert("not a uid", "peer:1", client)


async def test_checkpoints_are_loaded_on_the_executor(world, tmp_path, monkeypatch) -> None:
    hosted = backends(2)
    server = await world.expert_server(hosted, config=ServerConfig(checkpoint_dir=tmp_path))
    await server.save_checkpoints()
    executor = RecordingExecutor(world.executor())
    restored = ExpertServer(
        backends(2), rpc=server.rpc, executor=executor, config=ServerConfig(checkpoint_dir=tmp_path)
    )
    real_load = torch.load
    where: list[bool] = []

    def load(*args, **options):  # type: ignore[no-untyped-def]
        where.append(executor.inside > 0)
        return real_load(*args, **options)

    monkeypatch.setattr(torch, "load", load)
    assert await restored.load_checkpoints() == 2
    assert where == [True, True], "torch.load ran on the event loop"
    await executor.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_wait": -0.1}, "batch_wait must be a finite number of seconds >= 0"),
        ({"announce_period": 0}, "announce_period must be a finite positive number of seconds"),
        ({"announce_ttl": float("inf")}, "announce_ttl must be a finite positive number of seconds"),
        ({"max_elements": 0}, "max_elements must be an int >= 1"),
        ({"fault_rate": 1.5}, "fault_rate must be in [0, 1]"),
        ({"checkpoint_dir": 3}, "checkpoint_dir must be a path or None"),
    ],
)
async def test_server_config_names_the_bad_field(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ServerConfig(**options)


async def test_server_config_is_frozen_and_keeps_a_path(tmp_path) -> None:
    config = ServerConfig(checkpoint_dir=str(tmp_path))
    assert config.checkpoint_dir == tmp_path
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.fault_rate = 0.5  # type: ignore[misc]
