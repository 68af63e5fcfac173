"""Creating expert backends: seeded experts are reproducible and leave torch's global state alone."""

from __future__ import annotations

import pytest
import torch

from hivemind_core.moe.layers import make_expert
from hivemind_core.moe.server import ExpertBackend


def parameters(backend: ExpertBackend) -> list[torch.Tensor]:
    return [p.detach().clone() for p in backend.module.parameters()]


@pytest.mark.parametrize("expert_type", ["ffn", "transformer"])
def test_seeded_experts_are_identical_and_never_touch_the_global_generator(expert_type: str) -> None:
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    first = ExpertBackend.create("ffn.0", expert_type, 16, seed=7)
    second = ExpertBackend.create("ffn.1", expert_type, 16, seed=7)
    third = ExpertBackend.create("ffn.2", expert_type, 16, generator=torch.Generator().manual_seed(7))
    other = ExpertBackend.create("ffn.3", expert_type, 16, seed=8)
    assert torch.equal(torch.random.get_rng_state(), state), "creating a seeded expert changed torch's RNG"
    for a, b, c in zip(parameters(first), parameters(second), parameters(third), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
        assert torch.isfinite(a).all()
    assert any(not torch.equal(a, d) for a, d in zip(parameters(first), parameters(other), strict=True))


@pytest.mark.parametrize("expert_type", ["ffn", "transformer"])
def test_seeded_experts_start_from_torch_default_distributions(expert_type: str) -> None:
    torch.manual_seed(0)
    reference = dict(make_expert(expert_type, 64).named_parameters())
    seeded = dict(make_expert(expert_type, 64, generator=torch.Generator().manual_seed(0)).named_parameters())
    assert reference.keys() == seeded.keys()
    for name, value in seeded.items():
        expected = reference[name]
        assert value.shape == expected.shape
        # same family: the same bound (uniform inits) and constants where torch uses constants
        torch.testing.assert_close(value.abs().max(), expected.abs().max(), atol=0.02, rtol=0.1, msg=name)
        torch.testing.assert_close(value.std(), expected.std(), atol=0.02, rtol=0.15, msg=name)


def test_seed_and_generator_together_are_refused() -> None:
    with pytest.raises(ValueError, match="either seed or generator"):
        ExpertBackend.create("ffn.0", "ffn", 8, seed=1, generator=torch.Generator())


def test_unseeded_experts_draw_from_torch_like_any_module() -> None:
    torch.manual_seed(5)
    first = parameters(ExpertBackend.create("ffn.0", "ffn", 8))
    torch.manual_seed(5)
    second = parameters(ExpertBackend.create("ffn.0", "ffn", 8))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
