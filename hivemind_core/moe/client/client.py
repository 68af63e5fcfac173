"""MoEClient: what torch modules use to reach remote experts.

It bundles the RPC endpoint and DHT node of this peer, the bridge that lets synchronous torch
code wait for them, the wire compression, and a short-lived ban list: an endpoint whose call
failed at the transport level (refused, reset, timed out) is not chosen again for
``ban_time`` seconds, so a dead or frozen server stops being used after one failure instead
of when its DHT entries expire. It also owns the background work of the modules using it
(prefix-cache refreshes): :meth:`close` cancels whatever is still running.

**Who answers.** An expert found in the DHT was declared by a peer, under that peer's key
(``moe.declare``); anyone may declare an expert at anyone's endpoint, or a server may have
been replaced by another at the same address. So before the first call to an endpoint for a
declared expert the client asks the server to sign a fresh nonce (``moe.identity``), and calls
only if it holds the declared key; a mismatch is that expert's failure (:class:`UntrustedServer`,
a kind of :class:`MalformedResponse`), never a ban of the endpoint, whose rightful server may
serve other experts. A proof holds for ``PROOF_TTL`` seconds, or until a transport failure
there: a client pays one round trip per server per minute, not per call, and while it holds,
declarations naming another key at that endpoint are refused without asking (the beam search
skips them). An endpoint the transport could not dial is refused the same way, before
anything is sent.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Sequence
from typing import Any

import torch

from ...bridge import Bridge
from ...dht import DHT, DHTNode
from ...dht.identity import PUBLIC_KEY_BYTES, verify
from ...net import RPC, TransportError
from ...world import default_rng
from ..declare import NONCE_BYTES, identity_proof
from ..tensors import Compression, NonFiniteTensor, deserialize_tensors, serialize_tensors
from .errors import MalformedResponse

logger = logging.getLogger(__name__)

MAX_BANNED = 4096
"""Endpoints remembered as banned; endpoints come from the DHT, so the list needs a bound."""
MAX_REMEMBERED = 4096
"""Declared owners and proven keys remembered (each a bounded, oldest-first table)."""
PROOF_TTL = 60.0
"""Seconds a server's proof of its key is trusted; then the next call asks again (another
process may have taken the address without any call failing)."""


class UntrustedServer(MalformedResponse):
    """The expert's declared endpoint cannot be dialed, or the server there is not the peer
    that declared the expert (it does not hold the declaration's key)."""


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
        rng: random.Random | None = None,
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
        self._rng = rng  # nonces; the running world's stream when first needed
        self._owners: dict[tuple[str, str], bytes] = {}  # (uid, endpoint) -> declared key
        self._proven: dict[str, tuple[bytes, float]] = {}  # endpoint -> (key its server holds, until)
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
        """Skip ``endpoint`` for ``ban_time`` seconds (counted in ``bans``); whoever answers there
        next must prove its key again."""
        self.bans += 1
        self._proven.pop(endpoint, None)
        now = asyncio.get_running_loop().time()
        self._banned.pop(endpoint, None)
        self._banned[endpoint] = now + self.ban_time
        while self._banned and (len(self._banned) > MAX_BANNED or next(iter(self._banned.values())) <= now):
            del self._banned[next(iter(self._banned))]

    def expect_owner(self, uid: str, endpoint: str, owner: bytes) -> None:
        """Calls to ``uid`` at ``endpoint`` must reach the server holding ``owner``'s key (the
        peer that declared it); the beam search says so for every expert it picks."""
        _remember(self._owners, (uid, endpoint), owner)

    def refused(self, endpoint: str, owner: bytes) -> bool:
        """Whether the server at ``endpoint`` proved (lately) that it does not hold ``owner``'s key."""
        proven = self._proven_key(endpoint)
        return proven is not None and proven != owner

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
        return await self._call(uid, endpoint, "moe.forward", body, timeout, batch=batch)

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
        return await self._call(uid, endpoint, "moe.backward", body, timeout, batch=batch)

    async def info(self, uid: str, endpoint: str, *, timeout: float = 10.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        await self._check_server(uid, endpoint, deadline)
        return await self._request(endpoint, "moe.info", uid, deadline)

    async def _call(
        self, uid: str, endpoint: str, method: str, body: Any, timeout: float, *, batch: int
    ) -> list[torch.Tensor]:
        deadline = asyncio.get_running_loop().time() + timeout
        await self._check_server(uid, endpoint, deadline)
        response = await self._request(endpoint, method, body, deadline)
        try:
            # finite: one NaN answer would poison the mixture's output and every gradient after it
            tensors = deserialize_tensors(response, finite=True)
        except NonFiniteTensor:
            raise MalformedResponse(f"{method} from {endpoint} returned NaN or infinite values") from None
        except ValueError as error:
            raise MalformedResponse(
                f"{method} from {endpoint} returned undecodable tensors: {error}"
            ) from None
        if any(t.dim() == 0 or t.shape[0] != batch for t in tensors):
            raise MalformedResponse(f"{method} from {endpoint} returned tensors for the wrong batch size")
        return tensors

    async def _request(self, endpoint: str, method: str, body: Any, deadline: float) -> Any:
        """One RPC to an expert's server; a transport failure bans the endpoint."""
        timeout = max(deadline - asyncio.get_running_loop().time(), 1e-3)
        try:
            return await self.rpc.call(endpoint, method, body, timeout=timeout)
        except TransportError:
            self.ban(endpoint)
            raise

    async def _check_server(self, uid: str, endpoint: str, deadline: float) -> None:
        """Raise :class:`UntrustedServer` unless ``endpoint`` can be dialed and the server there
        holds the key of the peer that declared ``uid`` (when the client knows one)."""
        try:
            self.rpc.transport.check_endpoint(endpoint)
        except ValueError as error:
            raise UntrustedServer(f"{uid} is declared at an address that cannot be dialed: {error}") from None
        owner = self._owners.get((uid, endpoint))
        if owner is None:
            return
        proven = self._proven_key(endpoint)
        if proven is None:
            proven = await self._prove(endpoint, deadline)
            _remember(self._proven, endpoint, (proven, asyncio.get_running_loop().time() + PROOF_TTL))
        if proven == owner:
            return
        raise UntrustedServer(
            f"the server at {endpoint} is not the peer that declared {uid}: it does not hold key "
            f"{owner.hex()[:16]}..."
        )

    def _proven_key(self, endpoint: str) -> bytes | None:
        """The key the server at ``endpoint`` proved it holds, unless that proof is too old."""
        proof = self._proven.get(endpoint)
        if proof is None or asyncio.get_running_loop().time() >= proof[1]:
            return None
        return proof[0]

    async def _prove(self, endpoint: str, deadline: float) -> bytes:
        """The public key the server at ``endpoint`` proves it holds, by signing a fresh nonce."""
        if self._rng is None:
            self._rng = default_rng("moe-client")
        nonce = self._rng.randbytes(NONCE_BYTES)
        answer = await self._request(endpoint, "moe.identity", nonce, deadline)
        if (
            isinstance(answer, list)
            and len(answer) == 2
            and isinstance(answer[0], bytes)
            and len(answer[0]) == PUBLIC_KEY_BYTES
            and isinstance(answer[1], bytes)
            and verify(answer[0], answer[1], identity_proof(endpoint, nonce))
        ):
            return answer[0]
        raise MalformedResponse(f"moe.identity from {endpoint} did not prove which key it holds")


def _remember(table: dict[Any, Any], key: Any, value: Any) -> None:
    """Put ``key`` last in a table that forgets its oldest entries beyond ``MAX_REMEMBERED``."""
    table.pop(key, None)
    table[key] = value
    while len(table) > MAX_REMEMBERED:
        del table[next(iter(table))]


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
