"""Built-in expert types, by name: what ``--expert-type`` and ``ExpertBackend.create`` accept.

A seeded expert is initialized from a ``torch.Generator`` of its own, with the same
distributions torch's defaults use, so creating one never reads or advances torch's global
random state (which belongs to the user's training script).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import nn


class FeedforwardBlock(nn.Module):
    """Residual feed-forward block: x + W2 · GELU(W1 · LayerNorm(x)), hid -> 4·hid -> hid."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.up = nn.Linear(hidden_dim, 4 * hidden_dim)
        self.down = nn.Linear(4 * hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


class TransformerBlock(nn.Module):
    """A pre-norm transformer encoder layer over [batch, sequence, hidden] inputs."""

    def __init__(self, hidden_dim: int, heads: int | None = None) -> None:
        super().__init__()
        heads = heads or max(1, hidden_dim // 64)
        self.layer = nn.TransformerEncoderLayer(
            hidden_dim,
            heads,
            dim_feedforward=4 * hidden_dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


EXPERT_TYPES: Mapping[str, Callable[[int], nn.Module]] = MappingProxyType(
    {"ffn": FeedforwardBlock, "transformer": TransformerBlock}
)

SAMPLE_SHAPES: Mapping[str, Callable[[int], tuple[int, ...]]] = MappingProxyType(
    {"ffn": lambda hidden_dim: (hidden_dim,), "transformer": lambda hidden_dim: (16, hidden_dim)}
)
"""Per-sample input shape of each type (the batch dimension excluded)."""


def make_expert(expert_type: str, hidden_dim: int, *, generator: torch.Generator | None = None) -> nn.Module:
    """A new expert of a built-in type; with ``generator``, initialized from it alone."""
    factory = EXPERT_TYPES.get(expert_type)
    if factory is None:
        raise ValueError(f"unknown expert type {expert_type!r}; choose one of {sorted(EXPERT_TYPES)}")
    if generator is None:
        return factory(hidden_dim)
    with torch.device("meta"):  # no values drawn yet: the global generator is never touched
        module = factory(hidden_dim)
    module = module.to_empty(device="cpu")
    initialize(module, generator)
    return module


@torch.no_grad()
def initialize(module: nn.Module, generator: torch.Generator) -> None:
    """Give every parameter torch's default initial distribution, drawn from ``generator``.

    Children are visited before their parents, so a parent that overrides its child's
    defaults (attention zeroes its output projection's bias) has the last word.
    """
    for sub in reversed(list(module.modules())):
        own = dict(sub.named_parameters(recurse=False))
        if isinstance(sub, nn.Linear):
            bound = 1 / math.sqrt(sub.in_features) if sub.in_features else 0.0
            sub.weight.uniform_(-bound, bound, generator=generator)  # = kaiming_uniform_(a=sqrt(5))
            if sub.bias is not None:
                sub.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(sub, nn.LayerNorm):
            for name, value in own.items():
                value.fill_(1.0 if name == "weight" else 0.0)
        elif isinstance(sub, nn.MultiheadAttention):
            for name, value in own.items():
                if name.endswith("weight"):
                    nn.init.xavier_uniform_(value, generator=generator)
                else:
                    value.zero_()
            if sub.out_proj.bias is not None:
                sub.out_proj.bias.zero_()
        elif own:
            raise TypeError(f"cannot initialize {type(sub).__name__} from a generator")
        if any(True for _ in sub.buffers(recurse=False)):
            raise TypeError(f"cannot initialize the buffers of {type(sub).__name__} from a generator")
