"""ExpertServer: hosts experts, serves their forward/backward RPCs, announces them in the DHT.

RPC methods (msgpack bodies; tensors in the ``moe.tensors`` wire format):

* ``moe.info``     ``uid`` -> the expert's input/output schema and batch limit
* ``moe.identity`` ``nonce`` -> ``[public key, signature]``: proof that this server holds the
  key its experts are declared under (only with a DHT; see ``client.MoEClient``)
* ``moe.forward``  ``[uid, inputs, compression]`` -> outputs
* ``moe.backward`` ``[uid, inputs, grad_outputs, compression]`` -> input gradients (and the
  expert takes an optimizer step)

Every request is validated against the expert's schema before it joins a batch; a bad one
gets an error naming the problem and nobody else notices. Sizes, dtypes and shapes are
checked on the tensors' headers before any data is decoded, so a request claiming a million
rows is refused at once, and payloads over ``DECODE_INLINE_BYTES`` are decoded on the
executor, never on the event loop that serves everyone else. The server shares its RPC (and
so its port) with the peer's DHT node, and re-announces its experts every
``announce_period``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...dht import DHTNode
from ...net import RPC
from ...world import default_rng
from ..declare import NONCE_BYTES, declare_experts, identity_proof
from ..tensors import Compression, decode_tensor, read_headers, serialize_tensors
from .backend import ExpertBackend, TensorSpec
from .batching import TaskPool
from .config import ServerConfig
from .device import ComputeExecutor

logger = logging.getLogger(__name__)

METHODS = ("moe.info", "moe.identity", "moe.forward", "moe.backward")
_REQUEST_OVERHEAD = 64 * 1024  # msgpack framing, uid, headers and 8-bit block scales, generously
DECODE_INLINE_BYTES = 1 << 20
"""Requests with more tensor data than this are decoded on the executor, off the event loop."""


class ExpertServer:
    """Serves a set of :class:`ExpertBackend`; see the module docstring."""

    def __init__(
        self,
        backends: Sequence[ExpertBackend],
        *,
        rpc: RPC,
        executor: ComputeExecutor,
        dht: DHTNode | None = None,
        rng: random.Random | None = None,
        config: ServerConfig = ServerConfig(),  # noqa: B008 (frozen, so safely shared)
    ) -> None:
        if not backends:
            raise ValueError("an expert server needs at least one expert")
        if not isinstance(config, ServerConfig):
            raise TypeError(f"config must be a ServerConfig, got {type(config).__name__}")
        self.backends = {backend.uid: backend for backend in backends}
        if len(self.backends) != len(backends):
            raise ValueError("expert UIDs must be unique")
        self.rpc = rpc
        self.executor = executor
        self.dht = dht
        self.config = config
        self.rng = rng if rng is not None else default_rng("expert-server")
        self.forward_pools = {
            uid: TaskPool(
                f"{uid}.forward",
                b.forward,
                executor=executor,
                max_batch_size=b.max_batch_size,
                max_wait=config.batch_wait,
                flops_per_sample=b.flops_per_sample,
            )
            for uid, b in self.backends.items()
        }
        self.backward_pools = {
            uid: TaskPool(
                f"{uid}.backward",
                self._backward_process(b),
                executor=executor,
                max_batch_size=b.max_batch_size,
                max_wait=config.batch_wait,
                flops_per_sample=3 * b.flops_per_sample,
            )
            for uid, b in self.backends.items()
        }
        self._announcer: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str | None:
        return self.rpc.endpoint

    async def start(self) -> None:
        """Load checkpoints, start serving, and announce the experts (if there is a DHT)."""
        if self.config.checkpoint_dir is not None:
            await self.load_checkpoints()
        self.rpc.register("moe.info", self._info)
        # a body larger than any full batch could be is refused before it is even unpacked
        for name, method, backward in (
            ("moe.forward", self._forward, False),
            ("moe.backward", self._backward, True),
        ):
            largest = max(b.max_request_bytes(backward=backward) for b in self.backends.values())
            self.rpc.register(name, method, max_request_size=_REQUEST_OVERHEAD + largest * 101 // 100)
        if self.dht is not None:
            if self.endpoint is None:
                raise ValueError("an expert server must listen to be announced in the DHT")
            self.rpc.register("moe.identity", self._identity, max_request_size=256)
            await self.announce()
            self._announcer = asyncio.get_running_loop().create_task(self._announce_forever())

    async def shutdown(self) -> None:
        """Stop announcing and serving; save a final checkpoint if a directory is set."""
        if self._announcer is not None:
            self._announcer.cancel()
            await asyncio.gather(self._announcer, return_exceptions=True)
        for name in METHODS:
            self.rpc.unregister(name)
        for pool in [*self.forward_pools.values(), *self.backward_pools.values()]:
            await pool.close()
        if self.config.checkpoint_dir is not None:
            await self.save_checkpoints()
        await self.executor.close()

    async def announce(self) -> bool:
        assert self.dht is not None and self.endpoint is not None
        return await declare_experts(
            self.dht, list(self.backends), self.endpoint, self.dht.now() + self.config.announce_ttl
        )

    async def save_checkpoints(self) -> None:
        """Write each expert's parameters and optimizer state (atomically, file per expert)."""
        assert self.config.checkpoint_dir is not None
        self.config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for uid, backend in self.backends.items():
            path = self.config.checkpoint_dir / f"{uid}.pt"
            await self.executor.run(lambda b=backend, p=path: _save(b, p), flops=0)

    async def load_checkpoints(self) -> int:
        """Restore every expert that has a checkpoint; returns how many did.

        Reading and restoring run on the executor, like saving: never on the event loop, and
        never in the middle of a batch."""
        assert self.config.checkpoint_dir is not None
        loaded = 0
        for uid, backend in self.backends.items():
            path = self.config.checkpoint_dir / f"{uid}.pt"
            if path.exists():
                await self.executor.run(lambda b=backend, p=path: _load(b, p), flops=0)
                loaded += 1
        return loaded

    # ---- RPC methods ----------------------------------------------------------------------

    async def _info(self, _peer: str, uid: Any) -> dict[str, Any]:
        return self._backend(uid).info()

    async def _identity(self, _peer: str, nonce: Any) -> list[bytes]:
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise ValueError(f"moe.identity takes a nonce of {NONCE_BYTES} bytes")
        assert self.dht is not None and self.endpoint is not None
        identity = self.dht.identity
        return [identity.public_key, identity.sign(identity_proof(self.endpoint, nonce))]

    async def _forward(self, _peer: str, body: Any) -> list[Any]:
        uid, raw_inputs, compression = _unpack(body, 3, "forward body must be [uid, inputs, compression]")
        backend = self._backend(uid)
        reply = Compression(compression)
        (inputs,) = await self._receive(backend, [(raw_inputs, backend.inputs, "input")])
        self._maybe_fail(uid)
        return serialize_tensors(await self.forward_pools[uid].submit(inputs), reply)

    async def _backward(self, _peer: str, body: Any) -> list[Any]:
        uid, raw_inputs, raw_grads, compression = _unpack(
            body, 4, "backward body must be [uid, inputs, grad_outputs, compression]"
        )
        backend = self._backend(uid)
        reply = Compression(compression)
        inputs, grads = await self._receive(
            backend, [(raw_inputs, backend.inputs, "input"), (raw_grads, backend.outputs, "grad_output")]
        )
        self._maybe_fail(uid)
        return serialize_tensors(await self.backward_pools[uid].submit([*inputs, *grads]), reply)

    # ---- internals ------------------------------------------------------------------------

    def _backend(self, uid: Any) -> ExpertBackend:
        backend = self.backends.get(uid) if isinstance(uid, str) else None
        if backend is None:
            hosted = ", ".join(sorted(self.backends))
            raise KeyError(f"no expert {uid!r} on this server; it hosts: {hosted}")
        return backend

    async def _receive(
        self, backend: ExpertBackend, parts: Sequence[tuple[Any, Sequence[TensorSpec], str]]
    ) -> list[list[torch.Tensor]]:
        """Decode a request's tensor lists (raw, schema, what) after checking their headers.

        Every count, dtype, shape and the batch limit is checked before a byte of data is
        decoded; decoding checks for NaN and Inf (once, before copying); large payloads are
        decoded on the executor.
        """
        remaining = self.config.max_elements
        batches = []
        checked = []
        for raw, specs, what in parts:
            headers = read_headers(raw, max_elements=remaining)
            remaining -= sum(header.numel for header in headers)
            batches.append(backend.check_layout([(h.dtype, h.shape) for h in headers], specs, what))
            if batches[-1] != batches[0]:
                raise ValueError(f"{backend.uid}: {batches[0]} inputs but {batches[-1]} output gradients")
            checked.append((raw, headers, what))

        def decode() -> list[list[torch.Tensor]]:
            decoded = []
            for raw, headers, what in checked:
                tensors = []
                for i, (item, header) in enumerate(zip(raw, headers, strict=True)):
                    try:
                        tensors.append(decode_tensor(item, header, finite=True))
                    except ValueError as error:
                        raise ValueError(f"{what} {i} of {backend.uid}: {error}") from None
                decoded.append(tensors)
            return decoded

        if sum(header.nbytes for _, headers, _ in checked for header in headers) <= DECODE_INLINE_BYTES:
            return decode()
        return await self.executor.run(decode, flops=0)

    def _maybe_fail(self, uid: str) -> None:
        if self.config.fault_rate and self.rng.random() < self.config.fault_rate:
            raise RuntimeError(f"injected fault in {uid} (fault_rate={self.config.fault_rate})")

    @staticmethod
    def _backward_process(backend: ExpertBackend):  # type: ignore[no-untyped-def]
        count = len(backend.inputs)
        return lambda merged: backend.backward(merged[:count], merged[count:])

    async def _announce_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.announce_period)
            try:
                if not await self.announce():
                    logger.warning("some expert declarations were not stored; retrying next heartbeat")
            except Exception:
                logger.exception("announcing experts failed; retrying next heartbeat")


def _unpack(body: Any, size: int, message: str) -> list[Any]:
    if not isinstance(body, list) or len(body) != size:
        raise ValueError(message)
    return body


def _load(backend: ExpertBackend, path: Path) -> None:
    backend.load_state_dict(torch.load(path, map_location=backend.device, weights_only=True))


def _save(backend: ExpertBackend, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(backend.state_dict(), temporary)
    os.replace(temporary, path)
