"""MoEClient: what torch modules use to reach remote experts.

It bundles the RPC endpoint and DHT node of this peer, the bridge that lets synchronous torch
code wait for them, the wire compression, and a short-lived ban list: an endpoint whose call
failed at the transport level (refused, reset, timed out) is not chosen again for
``ban_time`` seconds, so a dead or frozen server stops being used after one failure instead
of when its DHT entries expire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import torch

from ...bridge import Bridge
from ...dht import DHT, DHTNode
from ...net import RPC, TransportError
from ..tensors import Compression, deserialize_tensors, serialize_tensors


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
        self.rpc = rpc
        self.dht = dht
        self.bridge = bridge
        self.compression = Compression(compression)
        self.ban_time = ban_time
        self._banned: dict[str, float] = {}

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
        self._banned[endpoint] = asyncio.get_running_loop().time() + self.ban_time

    async def forward(
        self, uid: str, endpoint: str, inputs: Sequence[torch.Tensor], *, timeout: float
    ) -> list[torch.Tensor]:
        body = [uid, serialize_tensors(inputs, self.compression), self.compression.value]
        return await self._call(endpoint, "moe.forward", body, timeout, batch=inputs[0].shape[0])

    async def backward(
        self,
        uid: str,
        endpoint: str,
        inputs: Sequence[torch.Tensor],
        grad_outputs: Sequence[torch.Tensor],
        *,
        timeout: float,
    ) -> list[torch.Tensor]:
        body = [
            uid,
            serialize_tensors(inputs, self.compression),
            serialize_tensors(grad_outputs, self.compression),
            self.compression.value,
        ]
        return await self._call(endpoint, "moe.backward", body, timeout, batch=inputs[0].shape[0])

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
        tensors = deserialize_tensors(response)
        if any(t.dim() == 0 or t.shape[0] != batch for t in tensors):
            raise ValueError(f"{method} from {endpoint} returned tensors for the wrong batch size")
        return tensors
