"""RemoteExpert: one remote expert as a torch module, with autograd through the network.

Forward sends the inputs to the expert's server; backward sends them again with the output
gradients, gets the input gradients back, and the server steps the expert's optimizer. Made
from a :class:`~..declare.Declaration` (``find_declarations``), it calls the server only if
that server holds the declaring peer's key.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..declare import Declaration
from ..uid import parse_uid
from .arguments import check_timeout
from .client import MoEClient


class RemoteExpert(nn.Module):
    """Calls expert ``uid`` at ``endpoint`` as if it were a local module."""

    def __init__(
        self,
        uid: str,
        endpoint: str,
        client: MoEClient,
        *,
        forward_timeout: float = 10.0,
        backward_timeout: float = 20.0,
    ) -> None:
        super().__init__()
        parse_uid(uid)
        check_timeout("forward_timeout", forward_timeout)
        check_timeout("backward_timeout", backward_timeout)
        self.uid = uid
        self.endpoint = endpoint
        self.client = client
        self.forward_timeout = forward_timeout
        self.backward_timeout = backward_timeout
        # makes autograd call backward (which trains the remote expert) even when no input needs grad
        self._dummy = nn.Parameter(torch.empty(0), requires_grad=True)

    @classmethod
    def declared(cls, declaration: Declaration, client: MoEClient, **options: float) -> RemoteExpert:
        """The expert ``declaration`` announces; calls fail unless its declaring peer answers."""
        client.expect_owner(declaration.uid, declaration.endpoint, declaration.owner)
        return cls(declaration.uid, declaration.endpoint, client, **options)

    def info(self) -> dict[str, Any]:
        return self.client.bridge.run(self.client.info(self.uid, self.endpoint))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = _RemoteCall.apply(self._dummy, self, *inputs)
        return outputs[0] if len(outputs) == 1 else outputs


class _RemoteCall(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, _dummy: torch.Tensor, expert: RemoteExpert, *inputs: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        client = expert.client
        host = [x.detach().cpu() for x in inputs]  # what goes on the wire is on the host anyway
        outputs = client.bridge.run(
            client.forward(expert.uid, expert.endpoint, host, timeout=expert.forward_timeout)
        )
        ctx.expert = expert
        ctx.devices = [x.device for x in inputs]
        ctx.save_for_backward(*host)
        device = inputs[0].device if inputs else torch.device("cpu")
        return tuple(output.to(device) for output in outputs)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        expert: RemoteExpert = ctx.expert
        inputs = ctx.saved_tensors
        client = expert.client
        grads = client.bridge.run(
            client.backward(
                expert.uid,
                expert.endpoint,
                list(inputs),
                [g.cpu().contiguous() for g in grad_outputs],
                timeout=expert.backward_timeout,
            )
        )
        return (None, None, *(grad.to(device) for grad, device in zip(grads, ctx.devices, strict=True)))
