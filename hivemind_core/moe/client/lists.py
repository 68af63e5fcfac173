"""Tensors from Python lists, through numpy: ``torch.tensor`` reads a list element by element
through the Python API, several times slower than numpy does, and the client builds index
tensors from lists on every forward and beam search step."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def longs(values: Sequence[int] | Sequence[Sequence[int]]) -> torch.Tensor:
    """An int64 tensor of ``values`` (a flat or a rectangular nested list of ints)."""
    return torch.from_numpy(np.array(values, dtype=np.int64))


def bools(values: Sequence[bool] | Sequence[Sequence[bool]]) -> torch.Tensor:
    """A bool tensor of ``values`` (a flat or a rectangular nested list of bools)."""
    return torch.from_numpy(np.array(values, dtype=np.bool_))
