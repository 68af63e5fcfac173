"""Misbehaving experts: a server whose answers are wrong rather than missing.

``misbehave(target, output="nan")`` makes each expert of ``target`` (an ``ExpertServer``, one
``ExpertBackend`` or several) answer NaN; ``output="garbage"`` answers values of the right
shape and dtype but the wrong scale (``GARBAGE_SCALE`` times standard normal noise, from a
``torch.Generator`` seeded per expert), until ``behave(target)``.

The seam is a torch forward hook on the expert's module, which ``ExpertBackend`` calls for every
forward and backward batch, so ``hivemind_core`` is untouched: the server validates, batches,
serializes and answers as usual, and only the client can notice. The hook's replacement is
detached from the true output, so a backward pass still returns the true input gradients and
the expert still trains: the fault is in what it answers, like a corrupted output stage. (A NaN
answer under UINT8 compression fails on the server, which cannot quantize NaN, and reaches the
client as a remote error instead.)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any, Literal
from weakref import WeakKeyDictionary

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from hivemind_core.moe.server import ExpertBackend, ExpertServer

Output = Literal["nan", "garbage"]
OUTPUTS: tuple[Output, ...] = ("nan", "garbage")
GARBAGE_SCALE = 1e6
"""Garbage answers are this many times standard normal noise: plausible shape, absurd values."""

Target = ExpertServer | ExpertBackend | Iterable[ExpertBackend]

# Which experts misbehave now. Keyed weakly by backend: a finished simulation leaves nothing here.
_hooks: WeakKeyDictionary[ExpertBackend, RemovableHandle] = WeakKeyDictionary()


def misbehave(target: Target, *, output: Output, seed: int = 0) -> int:
    """Make every expert of ``target`` answer ``output`` ("nan" or "garbage") until ``behave``;
    returns how many experts that is. Calling it again switches the kind of bad answer."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    backends = _backends(target)
    for backend in backends:
        behave(backend)
        generator = torch.Generator().manual_seed(_stream_seed(seed, backend.uid))
        _hooks[backend] = backend.module.register_forward_hook(_corrupting_hook(output, generator))
    return len(backends)


def behave(target: Target) -> int:
    """Make every expert of ``target`` answer truly again; returns how many had misbehaved."""
    restored = 0
    for backend in _backends(target):
        handle = _hooks.pop(backend, None)
        if handle is not None:
            handle.remove()
            restored += 1
    return restored


def misbehaving(backend: ExpertBackend) -> bool:
    return backend in _hooks


def _backends(target: Target) -> list[ExpertBackend]:
    if isinstance(target, ExpertServer):
        return list(target.backends.values())
    if isinstance(target, ExpertBackend):
        return [target]
    backends = list(target)
    for backend in backends:
        if not isinstance(backend, ExpertBackend):
            raise TypeError(f"expected an ExpertServer or ExpertBackends, got {type(backend).__name__}")
    return backends


def _stream_seed(seed: int, uid: str) -> int:
    """A per-expert seed that does not depend on PYTHONHASHSEED."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{uid}".encode(), digest_size=8).digest(), "big")


def _corrupting_hook(output: Output, generator: torch.Generator) -> Any:
    def bad(true: torch.Tensor) -> torch.Tensor:
        if not true.is_floating_point():
            return true
        if output == "nan":
            wrong = torch.full_like(true, math.nan)
        else:
            noise = torch.randn(true.shape, generator=generator, dtype=true.dtype)
            wrong = (noise * GARBAGE_SCALE).to(true.device)
        # the answer is wrong; the gradient flows as if it were true (see the module docstring)
        return true + (wrong - true).detach() if true.requires_grad else wrong

    def hook(_module: nn.Module, _inputs: Any, outputs: Any) -> Any:
        if isinstance(outputs, torch.Tensor):
            return bad(outputs)
        return type(outputs)(bad(t) for t in outputs)

    return hook
