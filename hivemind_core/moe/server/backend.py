"""ExpertBackend: one expert a server hosts: its module, optimizer and tensor schemas.

Requests are checked against the schema before they reach a batch, so one bad request can
only ever fail itself. Backward recomputes the forward pass (servers keep no per-request
state), returns the gradients for the inputs, and takes one optimizer step: every backward
request trains the expert. The parameters' gradients are taken from ``torch.autograd.grad``
straight into the step (``optim.step_with``) instead of through ``.grad``, ``step()`` and
``zero_grad()``: the same values, without torch.optim's per-call Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..layers import SAMPLE_SHAPES, make_expert
from ..uid import parse_uid
from .optim import as_grads, step_with

OptimizerFactory = Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class TensorSpec:
    """The shape of one sample (batch dimension excluded) and the dtype of a tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def describe(self) -> list[Any]:
        return [list(self.shape), str(self.dtype).removeprefix("torch.")]

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorSpec:
        return cls(tuple(tensor.shape[1:]), tensor.dtype)

    @property
    def sample_bytes(self) -> int:
        """Raw bytes of one sample on the wire (uncompressed, the most a sample can take)."""
        return math.prod(self.shape) * self.dtype.itemsize


def adam(params: Iterator[nn.Parameter], *, lr: float) -> torch.optim.Optimizer:
    """Adam with torch's fused kernel: ~5x faster steps on CPU than the default loop, and
    every backward request takes a step, so it matters."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return grad if grad is not None else torch.zeros_like(like)


def _as_list(outputs: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


class ExpertBackend:
    """A hosted expert; see the module docstring."""

    def __init__(
        self,
        uid: str,
        module: nn.Module,
        *,
        inputs: Sequence[TensorSpec],
        optimizer: OptimizerFactory | None = None,
        max_batch_size: int = 4096,
        device: str | torch.device = "cpu",
        clip_grad_norm: float | None = None,
    ) -> None:
        parse_uid(uid)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.uid = uid
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.optimizer = (optimizer or (lambda params: adam(params, lr=1e-3)))(self.module.parameters())
        self.inputs = list(inputs)
        self.max_batch_size = max_batch_size
        self.clip_grad_norm = clip_grad_norm
        self.params = list(self.module.parameters())
        """The module's parameters, in the order its optimizer was given them."""
        self.num_parameters = sum(p.numel() for p in self.params)
        with torch.no_grad():
            sample = [
                torch.zeros((1, *spec.shape), dtype=spec.dtype, device=self.device) for spec in self.inputs
            ]
            self.outputs = [TensorSpec.of(t) for t in _as_list(self.module(*sample))]

    @classmethod
    def create(
        cls,
        uid: str,
        expert_type: str,
        hidden_dim: int,
        *,
        lr: float = 1e-3,
        device: str | torch.device = "cpu",
        max_batch_size: int = 4096,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ExpertBackend:
        """A built-in expert type (``ffn``, ``transformer``) with an Adam optimizer.

        Its initial parameters come from ``generator``, or from a generator seeded with
        ``seed`` (the same seed gives the same expert), or else from torch's global generator
        like any new module. Torch's global random state is never reseeded here.
        """
        if seed is not None:
            if generator is not None:
                raise ValueError("pass either seed or generator, not both")
            generator = torch.Generator().manual_seed(seed)
        module = make_expert(expert_type, hidden_dim, generator=generator).to(dtype)
        spec = TensorSpec(SAMPLE_SHAPES[expert_type](hidden_dim), dtype)
        return cls(
            uid,
            module,
            inputs=[spec],
            optimizer=lambda params: adam(params, lr=lr),
            max_batch_size=max_batch_size,
            device=device,
        )

    @property
    def flops_per_sample(self) -> float:
        """Rough forward cost of one sample (2 flops per parameter), for simulated devices."""
        return 2.0 * self.num_parameters

    def max_request_bytes(self, *, backward: bool) -> int:
        """The largest tensor data a legitimate request can carry (a full batch, uncompressed)."""
        specs = [*self.inputs, *self.outputs] if backward else self.inputs
        return self.max_batch_size * sum(spec.sample_bytes for spec in specs)

    def info(self) -> dict[str, Any]:
        return {
            "inputs": [spec.describe() for spec in self.inputs],
            "outputs": [spec.describe() for spec in self.outputs],
            "max_batch_size": self.max_batch_size,
        }

    def check_layout(
        self,
        layouts: Sequence[tuple[torch.dtype, Sequence[int]]],
        specs: Sequence[TensorSpec],
        what: str,
    ) -> int:
        """The batch size, or ValueError naming the problem unless tensors of these (dtype,
        shape) fit ``specs`` as one batch. Needs no data, so it runs on a request's headers
        before anything is decoded."""
        if len(layouts) != len(specs):
            raise ValueError(f"{self.uid} takes {len(specs)} {what}, got {len(layouts)}")
        batch = layouts[0][1][0] if layouts and len(layouts[0][1]) else None
        for i, ((dtype, shape), spec) in enumerate(zip(layouts, specs, strict=True)):
            if dtype != spec.dtype:
                raise ValueError(f"{what} {i} of {self.uid} must be {spec.dtype}, got {dtype}")
            if len(shape) != len(spec.shape) + 1 or tuple(shape[1:]) != spec.shape:
                raise ValueError(
                    f"{what} {i} of {self.uid} must have shape [batch, {', '.join(map(str, spec.shape))}], "
                    f"got {list(shape)}"
                )
            if shape[0] != batch:
                raise ValueError(f"{what} of {self.uid} disagree on the batch size")
        if batch is not None and batch > self.max_batch_size:
            raise ValueError(f"batch of {batch} exceeds {self.uid}'s max_batch_size of {self.max_batch_size}")
        return batch or 0

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            outputs = self.module(*(x.to(self.device) for x in inputs))
        return [y.cpu() for y in _as_list(outputs)]

    def backward(
        self, inputs: Sequence[torch.Tensor], grad_outputs: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Gradients for ``inputs``; also steps the optimizer (asynchronous training)."""
        leaves = [x.to(self.device).requires_grad_(x.is_floating_point()) for x in inputs]
        wanted = [x for x in leaves if x.requires_grad]
        trained = [p for p in self.params if p.requires_grad]
        with torch.enable_grad():
            outputs = _as_list(self.module(*leaves))
            grads = torch.autograd.grad(
                outputs,
                [*wanted, *trained],
                [g.to(self.device) for g in grad_outputs],
                allow_unused=True,
            )
        input_grads, param_grads = iter(grads[: len(wanted)]), grads[len(wanted) :]
        if self.clip_grad_norm is not None:
            self._clip(trained, param_grads)
        step_with(self.optimizer, trained, param_grads)
        return [_or_zeros(next(input_grads) if x.requires_grad else None, x).cpu() for x in leaves]

    def _clip(self, params: list[nn.Parameter], grads: Sequence[torch.Tensor | None]) -> None:
        """``clip_grad_norm_`` itself, on the gradients in hand (scaled in place)."""
        assert self.clip_grad_norm is not None
        with as_grads(params, grads):
            nn.utils.clip_grad_norm_(params, self.clip_grad_norm)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
