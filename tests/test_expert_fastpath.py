"""An expert's backward steps its optimizer without torch.optim's Python (``optim.step_with``):
the results must be those of plain autograd, ``.grad``, ``optimizer.step()`` and ``zero_grad()``
on the same inputs, bit for bit where the same kernel runs, checkpoints included."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from hivemind_core.moe.layers import make_expert
from hivemind_core.moe.server import ExpertBackend
from hivemind_core.moe.server.backend import TensorSpec
from hivemind_core.moe.server.optim import step_with

Factory = Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, Factory] = {
    "fused adam (the default)": lambda p: torch.optim.Adam(p, lr=3e-3, fused=True),
    "fused adam, amsgrad and weight decay": lambda p: torch.optim.Adam(
        p, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, amsgrad=True, fused=True
    ),
    "fused adam, decoupled weight decay, maximize": lambda p: torch.optim.Adam(
        p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, maximize=True, fused=True
    ),
    "plain adam": lambda p: torch.optim.Adam(p, lr=3e-3),
    "sgd with momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "fused adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
}


def reference_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    grad: torch.Tensor,
    clip: float | None = None,
) -> torch.Tensor:
    """What ExpertBackend.backward did with the textbook calls."""
    leaf = x.clone().requires_grad_(True)
    module(leaf).backward(grad)
    if clip is not None:
        nn.utils.clip_grad_norm_(module.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    assert leaf.grad is not None
    return leaf.grad


def pair(
    factory: Factory, *, clip: float | None = None
) -> tuple[ExpertBackend, nn.Module, torch.optim.Optimizer]:
    module = make_expert("ffn", 16, generator=torch.Generator().manual_seed(3))
    twin = copy.deepcopy(module)
    backend = ExpertBackend(
        "ffn.0.0", module, inputs=[TensorSpec((16,), torch.float32)], optimizer=factory, clip_grad_norm=clip
    )
    return backend, twin, factory(twin.parameters())


def assert_same(backend: ExpertBackend, twin: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    for (name, ours), theirs in zip(backend.module.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(ours, theirs), name
        assert ours.grad is None
    ours_state, theirs_state = backend.optimizer.state_dict(), optimizer.state_dict()
    assert ours_state["param_groups"] == theirs_state["param_groups"]
    for index, state in theirs_state["state"].items():
        for key, value in state.items():
            assert torch.equal(ours_state["state"][index][key], value), (index, key)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("clip", [None, 0.05])
def test_backward_trains_exactly_as_autograd_and_torch_optim(name: str, clip: float | None) -> None:
    backend, twin, optimizer = pair(OPTIMIZERS[name], clip=clip)
    inputs = torch.Generator().manual_seed(11)
    for batch in [8, 1, 5, 16, 3, 8]:
        x = torch.randn(batch, 16, generator=inputs)
        grad = torch.randn(batch, 16, generator=inputs)
        expected = reference_step(twin, optimizer, x, grad, clip)
        (got,) = backend.backward([x.clone()], [grad])
        assert torch.equal(got, expected)
        assert_same(backend, twin, optimizer)


def test_checkpoints_keep_torch_format_and_training_continues_identically(tmp_path) -> None:
    backend, twin, optimizer = pair(OPTIMIZERS["fused adam (the default)"])
    inputs = torch.Generator().manual_seed(5)
    batches = [(torch.randn(4, 16, generator=inputs), torch.randn(4, 16, generator=inputs)) for _ in range(6)]
    for x, grad in batches[:3]:
        backend.backward([x.clone()], [grad])
        reference_step(twin, optimizer, x, grad)
    torch.save(backend.state_dict(), tmp_path / "expert.pt")
    saved = torch.load(tmp_path / "expert.pt", weights_only=True)
    assert saved["optimizer"].keys() == optimizer.state_dict().keys()
    restored, _, _ = pair(OPTIMIZERS["fused adam (the default)"])
    restored.load_state_dict(saved)
    assert_same(restored, twin, optimizer)
    for x, grad in batches[3:]:
        (got,) = restored.backward([x.clone()], [grad])
        assert torch.equal(got, reference_step(twin, optimizer, x, grad))
    assert_same(restored, twin, optimizer)


def test_changed_hyperparameters_frozen_parameters_and_hooks_are_honoured() -> None:
    backend, twin, optimizer = pair(OPTIMIZERS["fused adam (the default)"])
    inputs = torch.Generator().manual_seed(9)
    calls: list[int] = []

    def step(x: torch.Tensor, grad: torch.Tensor) -> None:
        (got,) = backend.backward([x.clone()], [grad])
        assert torch.equal(got, reference_step(twin, optimizer, x, grad))
        assert_same(backend, twin, optimizer)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(6, 16, generator=inputs), torch.randn(6, 16, generator=inputs)

    step(*batch())
    for group in (*backend.optimizer.param_groups, *optimizer.param_groups):
        group["lr"] = 0.05  # as a learning-rate schedule would
    step(*batch())
    for module in (backend.module, twin):
        module.norm.requires_grad_(False)  # frozen: no gradient, no step, no state change
    step(*batch())
    handle = backend.optimizer.register_step_post_hook(lambda *_: calls.append(1))
    step(*batch())
    assert calls == [1], "with a hook, the optimizer's own step runs (and calls it)"
    handle.remove()
    step(*batch())
    assert calls == [1]


def test_step_with_skips_parameters_without_gradients_like_adam() -> None:
    params = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))]
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    ours, theirs = torch.optim.Adam(params, lr=0.1, fused=True), torch.optim.Adam(twins, lr=0.1, fused=True)
    for grads in ([torch.ones(3), torch.ones(2)], [torch.ones(3), None], [None, -torch.ones(2)]):
        step_with(ours, params, grads)
        for twin, grad in zip(twins, grads, strict=True):
            twin.grad = grad
        theirs.step()
        theirs.zero_grad(set_to_none=True)
        for a, b in zip(params, twins, strict=True):
            assert torch.equal(a, b) and a.grad is None
    assert ours.state[params[0]]["step"] == theirs.state[twins[0]]["step"] == 2
    assert ours.state[params[1]]["step"] == theirs.state[twins[1]]["step"] == 2


def test_inputs_that_need_no_gradient_get_zeros() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))

        def forward(self, x: torch.Tensor, unused: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
            return x * self.scale * count.unsqueeze(1)

    backend = ExpertBackend(
        "scaled.0",
        Scaled(),
        inputs=[
            TensorSpec((4,), torch.float32),
            TensorSpec((4,), torch.float32),
            TensorSpec((), torch.int64),
        ],
    )
    x, unused, count = torch.ones(2, 4), torch.ones(2, 4), torch.tensor([2, 3])
    grad_x, grad_unused, grad_count = backend.backward([x, unused, count], [torch.ones(2, 4)])
    assert torch.equal(grad_x, torch.tensor([[2.0] * 4, [3.0] * 4]))
    assert torch.equal(grad_unused, torch.zeros(2, 4)) and torch.equal(
        grad_count, torch.zeros(2, dtype=torch.int64)
    )


def test_the_default_optimizer_steps_without_torch_optims_step(monkeypatch) -> None:
    backend, twin, optimizer = pair(OPTIMIZERS["fused adam (the default)"])
    x, grad = torch.randn(4, 16), torch.randn(4, 16)
    backend.backward([x.clone()], [grad])  # the first step creates the state, through step()
    reference_step(twin, optimizer, x, grad)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("Adam.step ran")

    monkeypatch.setattr(torch.optim.Adam, "step", refuse)
    backend.backward([x.clone()], [grad])
    monkeypatch.undo()
    reference_step(twin, optimizer, x, grad)
    assert_same(backend, twin, optimizer)


@pytest.mark.parametrize("missing", ["_FUSED_ADAM", "_GLOBAL_PRE_HOOKS"])
def test_a_torch_without_the_private_pieces_steps_through_step(monkeypatch, missing: str) -> None:
    """The project accepts any torch 2.x: where a private name it relies on is absent, every
    step goes through Adam.step, and training is still exactly torch's."""
    from hivemind_core.moe.server import optim

    monkeypatch.setattr(optim, missing, None)
    backend, twin, optimizer = pair(OPTIMIZERS["fused adam (the default)"])
    steps = 0
    original = torch.optim.Adam.step

    def counted(self: torch.optim.Adam, *args: object, **kwargs: object) -> object:
        nonlocal steps
        steps += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counted)
    inputs = torch.Generator().manual_seed(5)
    for batch in [4, 2, 6]:
        x, grad = torch.randn(batch, 16, generator=inputs), torch.randn(batch, 16, generator=inputs)
        (got,) = backend.backward([x.clone()], [grad])
        assert torch.equal(got, reference_step(twin, optimizer, x, grad))
    assert_same(backend, twin, optimizer)
    assert steps == 6  # three of ours, three of the reference's
