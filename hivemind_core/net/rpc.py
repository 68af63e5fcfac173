"""Named remote methods with msgpack bodies, on top of any Transport.

Wire format (msgpack, never pickle):

* request: ``[method: str, body]``
* response: ``[0, result]`` on success, ``[1, error_type: str, message: str]`` on failure.

A malformed request is a protocol violation (the TCP transport drops that connection); an
exception inside a method is sent back and re-raised on the caller as :class:`RemoteError`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from .errors import ProtocolError, RemoteError, UnknownMethodError
from .transport import Endpoint, Transport

logger = logging.getLogger(__name__)

Method = Callable[[Endpoint, Any], Awaitable[Any]]
"""An RPC method: called with the caller's endpoint and the decoded body; returns the result."""

_OK, _FAILED = 0, 1
_METHOD_PREFIX = 512  # a request's method name is read from this many bytes


def _method_of(payload: bytes) -> Any:
    """The method a request names, read from its first bytes only (None if it cannot tell)."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(payload[:_METHOD_PREFIX])
    try:
        return unpacker.unpack() if unpacker.read_array_header() == 2 else None
    except Exception:
        return None


_PACKER = msgpack.Packer(use_bin_type=True)
"""One packer for every call: ``msgpack.packb`` builds a packer (and its 256 KiB buffer) per
call, three times the cost of packing an RPC. Sharing it is safe because, with no ``default``
hook, a ``pack`` call runs no Python code and so holds the GIL from start to end, and it
empties its buffer after each value (on errors too)."""


def pack(value: Any) -> bytes:
    return _PACKER.pack(value)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


class RPC:
    """Serve named methods and call them on other peers through one transport."""

    def __init__(self, transport: Transport, *, default_timeout: float = 10.0) -> None:
        self.transport = transport
        self.default_timeout = default_timeout
        self._methods: dict[str, Method] = {}
        self._max_request_size: dict[str, int] = {}
        self._smallest_limit: float = math.inf  # requests up to this size skip the size check

    @property
    def endpoint(self) -> Endpoint | None:
        return self.transport.endpoint

    def register(self, name: str, method: Method, *, max_request_size: int | None = None) -> None:
        """Serve ``method`` as ``name``.

        With ``max_request_size``, a request to it of more bytes is refused after reading only
        its method name, before the body is decoded: a peer cannot make this one spend the time
        and memory of unpacking a body no legitimate caller would send.
        """
        if name in self._methods:
            raise ValueError(f"RPC method {name!r} is already registered")
        if max_request_size is not None and max_request_size < 1:
            raise ValueError(f"max_request_size must be at least 1 byte, got {max_request_size}")
        self._methods[name] = method
        if max_request_size is not None:
            self._max_request_size[name] = max_request_size
        self._smallest_limit = min(self._max_request_size.values(), default=math.inf)

    def unregister(self, name: str) -> None:
        """Stop serving ``name``; later calls get UnknownMethodError."""
        self._methods.pop(name, None)
        self._max_request_size.pop(name, None)
        self._smallest_limit = min(self._max_request_size.values(), default=math.inf)

    async def serve(self) -> Endpoint:
        """Start answering calls to the registered methods; returns this peer's endpoint."""
        return await self.transport.listen(self._dispatch)

    async def call(
        self, peer: Endpoint, method: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Call ``method`` on ``peer`` and return its result.

        Raises the transport's errors (``RequestTimeout``, ``PeerUnavailable``...),
        ``UnknownMethodError`` or ``RemoteError`` if the remote method failed, and
        ``ProtocolError`` if the peer answered with something that is not a valid response.
        """
        try:
            payload = pack((method, body))
        except (TypeError, ValueError, OverflowError) as error:
            raise TypeError(f"cannot encode the body of {method!r} as msgpack: {error}") from None
        response = await self.transport.request(
            peer, payload, timeout=self.default_timeout if timeout is None else timeout
        )
        try:
            status, *rest = unpack(response)
        except Exception as error:
            raise ProtocolError(f"malformed response to {method!r} from {peer}: {error}") from None
        if status == _OK and len(rest) == 1:
            return rest[0]
        if status == _FAILED and len(rest) == 2 and all(isinstance(x, str) for x in rest):
            error_type, message = rest
            error_class = UnknownMethodError if error_type == UnknownMethodError.__name__ else RemoteError
            raise error_class(message, remote_type=error_type, peer=peer, method=method)
        raise ProtocolError(f"malformed response to {method!r} from {peer}: status {status!r}")

    async def _dispatch(self, peer: Endpoint, payload: bytes) -> bytes:
        if len(payload) > self._smallest_limit:
            method = _method_of(payload)
            limit = self._max_request_size.get(method) if isinstance(method, str) else None
            if limit is not None and len(payload) > limit:
                message = f"a {method!r} request may be {limit} bytes, got {len(payload)}"
                return pack((_FAILED, "RequestTooLarge", message))
        try:
            method, body = unpack(payload)
        except Exception as error:
            raise ProtocolError(f"request is not a msgpack [method, body] pair: {error}") from None
        if not isinstance(method, str):
            raise ProtocolError(f"request names its method with a {type(method).__name__}, not a string")
        handler = self._methods.get(method)
        if handler is None:
            known = ", ".join(sorted(self._methods)) or "none"
            return pack(
                (
                    _FAILED,
                    UnknownMethodError.__name__,
                    f"unknown method {method!r}; this peer serves: {known}",
                )
            )
        try:
            result = await handler(peer, body)
        except Exception as error:
            logger.debug("RPC method %r failed for %s", method, peer, exc_info=True)
            return pack((_FAILED, type(error).__name__, str(error)))
        try:
            return pack((_OK, result))
        except (TypeError, ValueError, OverflowError) as error:
            logger.error("RPC method %r returned a result msgpack cannot encode: %s", method, error)
            return pack((_FAILED, "SerializationError", f"result of {method!r} is not msgpack-encodable"))
