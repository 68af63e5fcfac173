"""Misbehaving experts: a server whose answers are wrong rather than missing.

``misbehave(target, output="nan")`` makes each expert of ``target`` (an ``ExpertServer``, one
``ExpertBackend`` or several) answer NaN; ``output="garbage"`` answers values of the right
shape and dtype but the wrong scale (``GARBAGE_SCALE`` times standard normal noise, from a
``torch.Generator`` seeded per expert); ``output="plausible"`` answers noise rescaled to each
sample's true norm, finite and of the right scale, the hardest junk to tell from an answer;
``output="slow", delay=5.0`` answers truly but ``delay`` seconds late (an ``ExpertServer`` only:
the delay is added before each batch its compute executor runs), until ``behave(target)``.

The seam is a torch forward hook on the expert's module, which ``ExpertBackend`` calls for every
forward and backward batch, so ``hivemind_core`` is untouched: the server validates, batches,
serializes and answers as usual, and only the client can notice. The hook's replacement is
detached from the true output, so a backward pass still returns the true input gradients and
the expert still trains: the fault is in what it answers, like a corrupted output stage. (A NaN
answer under UINT8 compression fails on the server, which cannot quantize NaN, and reaches the
client as a remote error instead.)
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar
from weakref import WeakKeyDictionary

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from hivemind_core.moe.server import ExpertBackend, ExpertServer
from hivemind_core.moe.server.device import ComputeExecutor

Output = Literal["nan", "garbage", "slow", "plausible"]
OUTPUTS: tuple[Output, ...] = ("nan", "garbage", "slow", "plausible")
GARBAGE_SCALE = 1e6
"""Garbage answers are this many times standard normal noise: plausible shape, absurd values."""

T = TypeVar("T")
Target = ExpertServer | ExpertBackend | Iterable[ExpertBackend]

# Which experts misbehave now. Keyed weakly by backend: a finished simulation leaves nothing here.
_hooks: WeakKeyDictionary[ExpertBackend, RemovableHandle] = WeakKeyDictionary()
# Which servers answer late now (their executor's ``run`` is wrapped on the instance).
_delayed: WeakKeyDictionary[ExpertServer, ComputeExecutor] = WeakKeyDictionary()


def misbehave(target: Target, *, output: Output, seed: int = 0, delay: float | None = None) -> int:
    """Make every expert of ``target`` answer ``output`` until ``behave``; returns how many
    experts that is. Calling it again switches the kind of bad answer. ``delay`` (seconds) is
    for "slow" only, which needs an ``ExpertServer``."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if (delay is not None) != (output == "slow"):
        raise ValueError(
            f"delay is for output 'slow' (and it needs one), got output {output!r}, delay {delay!r}"
        )
    backends = _backends(target)
    behave(target)
    if output == "slow":
        assert delay is not None
        if not isinstance(target, ExpertServer):
            raise TypeError("a slow expert needs its ExpertServer (the delay is added on its executor)")
        if not (math.isfinite(delay) and delay > 0):
            raise ValueError(f"delay must be a finite number of seconds > 0, got {delay!r}")
        _delayed[target] = _delay(target.executor, delay)
        return len(backends)
    for backend in backends:
        generator = torch.Generator().manual_seed(_stream_seed(seed, backend.uid))
        _hooks[backend] = backend.module.register_forward_hook(_corrupting_hook(output, generator))
    return len(backends)


def behave(target: Target) -> int:
    """Make every expert of ``target`` answer truly again; returns how many had misbehaved."""
    restored = 0
    if isinstance(target, ExpertServer) and (executor := _delayed.pop(target, None)) is not None:
        del executor.run  # the class's own again
        restored += len(target.backends)
    for backend in _backends(target):
        handle = _hooks.pop(backend, None)
        if handle is not None:
            handle.remove()
            restored += 1
    return restored


def misbehaving(backend: ExpertBackend) -> bool:
    return backend in _hooks


def _delay(executor: ComputeExecutor, delay: float) -> ComputeExecutor:
    """Wrap ``executor.run`` on the instance so each batch starts ``delay`` seconds late."""
    run = executor.run

    async def late(function: Callable[[], T], *, flops: float) -> T:
        await asyncio.sleep(delay)
        return await run(function, flops=flops)

    executor.run = late  # type: ignore[method-assign]
    return executor


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
        elif output == "plausible":  # per sample: random direction, the true answer's norm
            noise = torch.randn(true.shape, generator=generator, dtype=true.dtype).to(true.device)
            dims = tuple(range(1, true.dim()))
            norms = true.detach().norm(dim=dims, keepdim=True) if dims else true.detach().abs()
            scale = noise.norm(dim=dims, keepdim=True) if dims else noise.abs()
            wrong = noise * norms / scale.clamp(min=1e-12)
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
