"""MoEClient: what torch modules use to reach remote experts.

It bundles the RPC endpoint and DHT node of this peer, the bridge that lets synchronous torch
code wait for them, the wire compression, and a short-lived ban list: an endpoint whose call
failed at the transport level (refused, reset, timed out) is not chosen again for
``ban_time`` seconds, so a dead or frozen server stops being used after one failure instead
of when its DHT entries expire. It also owns the background work of the modules using it
(prefix-cache refreshes): :meth:`close` cancels whatever is still running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

import torch

from ...bridge import Bridge
from ...dht import DHT, DHTNode
from ...net import RPC, TransportError
from ..tensors import Compression, deserialize_tensors, serialize_tensors
from .errors import MalformedResponse

logger = logging.getLogger(__name__)

MAX_BANNED = 4096
"""Endpoints remembered as banned; endpoints come from the DHT, so the list needs a bound."""


class MoEClient:
    """Remote expert calls for one peer; see the module docstring."""

    def __init__(
        self,
        *,
        rpc: RPC,
        dht: DHTNode | None,
        bridge: Bridge,
        compression: Compression = Compression.NONE,
        ban_time: float = 30.0,
    ) -> None:
        if not 0 <= ban_time < float("inf"):
            raise ValueError(f"ban_time must be a finite number of seconds >= 0, got {ban_time}")
        self.rpc = rpc
        self.dht = dht
        self.bridge = bridge
        self.compression = Compression(compression)
        self.ban_time = ban_time
        self._banned: dict[str, float] = {}  # endpoint -> until; insertion order = expiry order
        self.bans = 0  # servers banned so far (a server banned twice counts twice)
        # in spawn order, not a set (address order): close() cancels them, and a cancelled request
        # writes a CANCEL frame, so this order is the order of frames on the wire
        self._background: dict[asyncio.Task[Any], None] = {}

    @classmethod
    def from_dht(cls, dht: DHT, **options: Any) -> MoEClient:
        """A client sharing a blocking :class:`DHT`'s node, port and loop thread."""
        return cls(rpc=dht.node.rpc, dht=dht.node, bridge=dht.bridge, **options)

    def is_banned(self, endpoint: str) -> bool:
        until = self._banned.get(endpoint)
        if until is None:
            return False
        if asyncio.get_running_loop().time() >= until:
            del self._banned[endpoint]
            return False
        return True

    def ban(self, endpoint: str) -> None:
        """Skip ``endpoint`` for ``ban_time`` seconds (counted in ``bans``)."""
        self.bans += 1
        now = asyncio.get_running_loop().time()
        self._banned.pop(endpoint, None)
        self._banned[endpoint] = now + self.ban_time
        while self._banned and (len(self._banned) > MAX_BANNED or next(iter(self._banned.values())) <= now):
            del self._banned[next(iter(self._banned))]

    def spawn(self, coroutine: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run ``coroutine`` in the background until it ends or the client closes.

        Its failure is logged, never left unretrieved; awaiting the task still sees it.
        """
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._background[task] = None
        task.add_done_callback(self._finished)
        return task

    async def close(self) -> None:
        """Cancel the background work of every module using this client, and wait for it."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("background task %s failed: %r", task.get_name(), task.exception())

    async def forward(
        self, uid: str, endpoint: str, inputs: Sequence[torch.Tensor], *, timeout: float
    ) -> list[torch.Tensor]:
        batch = _batch_size(inputs, "inputs")
        body = [uid, serialize_tensors(inputs, self.compression), self.compression.value]
        return await self._call(endpoint, "moe.forward", body, timeout, batch=batch)

    async def backward(
        self,
        uid: str,
        endpoint: str,
        inputs: Sequence[torch.Tensor],
        grad_outputs: Sequence[torch.Tensor],
        *,
        timeout: float,
    ) -> list[torch.Tensor]:
        batch = _batch_size(inputs, "inputs")
        if _batch_size(grad_outputs, "grad_outputs") != batch:
            raise ValueError(f"inputs have {batch} rows but grad_outputs {grad_outputs[0].shape[0]}")
        body = [
            uid,
            serialize_tensors(inputs, self.compression),
            serialize_tensors(grad_outputs, self.compression),
            self.compression.value,
        ]
        return await self._call(endpoint, "moe.backward", body, timeout, batch=batch)

    async def info(self, uid: str, endpoint: str, *, timeout: float = 10.0) -> dict[str, Any]:
        return await self.rpc.call(endpoint, "moe.info", uid, timeout=timeout)

    async def _call(
        self, endpoint: str, method: str, body: Any, timeout: float, *, batch: int
    ) -> list[torch.Tensor]:
        try:
            response = await self.rpc.call(endpoint, method, body, timeout=timeout)
        except TransportError:
            self.ban(endpoint)
            raise
        try:
            tensors = deserialize_tensors(response)
        except ValueError as error:
            raise MalformedResponse(
                f"{method} from {endpoint} returned undecodable tensors: {error}"
            ) from None
        if any(t.dim() == 0 or t.shape[0] != batch for t in tensors):
            raise MalformedResponse(f"{method} from {endpoint} returned tensors for the wrong batch size")
        if not all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
            # one NaN answer would poison the mixture's output and every gradient after it
            raise MalformedResponse(f"{method} from {endpoint} returned NaN or infinite values")
        return tensors


def _batch_size(tensors: Sequence[torch.Tensor], what: str) -> int:
    """The shared first dimension of ``tensors``; ValueError unless there is one."""
    if not tensors:
        raise ValueError(f"{what}: an expert call needs at least one tensor")
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0:
            shape = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(
                f"{what}[{i}] must be a tensor of shape [batch, ...] (a batch dimension first), got {shape}"
            )
        if tensor.shape[0] != tensors[0].shape[0]:
            raise ValueError(f"{what} disagree on the batch size: {[list(t.shape) for t in tensors]}")
    return tensors[0].shape[0]
