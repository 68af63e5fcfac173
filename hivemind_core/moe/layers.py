"""Built-in expert types, by name: what ``--expert-type`` and ``ExpertBackend.create`` accept."""

from __future__ import annotations

from collections.abc import Callable

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


EXPERT_TYPES: dict[str, Callable[[int], nn.Module]] = {
    "ffn": FeedforwardBlock,
    "transformer": TransformerBlock,
}

SAMPLE_SHAPES: dict[str, Callable[[int], tuple[int, ...]]] = {
    "ffn": lambda hidden_dim: (hidden_dim,),
    "transformer": lambda hidden_dim: (16, hidden_dim),
}
"""Per-sample input shape of each type (the batch dimension excluded)."""


def make_expert(expert_type: str, hidden_dim: int) -> nn.Module:
    try:
        return EXPERT_TYPES[expert_type](hidden_dim)
    except KeyError:
        raise ValueError(
            f"unknown expert type {expert_type!r}; choose one of {sorted(EXPERT_TYPES)}"
        ) from None
