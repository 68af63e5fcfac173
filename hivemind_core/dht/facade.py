"""DHT: a DHT node for plain synchronous code (training scripts), on its own loop thread.

It creates a :class:`DHTNode` over TCP on a :class:`~hivemind_core.bridge.LoopThread` and
turns each call into a blocking wait on that loop; the same bridge then serves the MoE
client. Simulations use :class:`DHTNode` directly on the virtual-time loop instead.

Every method's ``timeout`` (seconds; None waits as long as the node does) bounds the whole
call. ``get`` and ``get_many`` hand it to the node, which returns what it found when it
passes, as :meth:`DHTNode.get_many` does; every other call is cancelled on the loop when it
passes and raises ``TimeoutError`` (see :class:`~hivemind_core.bridge.LoopBridge`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from ..bridge import LoopThread
from ..net import TcpConfig, TcpTransport
from .config import DHTConfig
from .identity import Identity
from .node import DHTNode, StoreItem, ValueWithExpiration
from .routing import Contact

T = TypeVar("T")

GET_GRACE = 1.0
"""Seconds a ``get`` may overrun its timeout (returning what it found) before the bridge
cancels it: the node stops its lookup at the timeout, this only covers a stalled loop."""


class DHT:
    """A blocking DHT peer; use as a context manager or call :meth:`shutdown`."""

    def __init__(
        self,
        *,
        initial_peers: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        client_mode: bool = False,
        identity: Identity | None = None,
        config: DHTConfig | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.bridge = LoopThread(name="hivemind-dht")
        try:
            self.node: DHTNode = self._call(
                DHTNode.create(
                    TcpTransport(TcpConfig(host=host, port=port)),
                    initial_peers=list(initial_peers),
                    identity=identity,
                    config=config,
                    client_mode=client_mode,
                ),
                timeout=startup_timeout,
            )
        except BaseException:
            self.bridge.close()
            raise

    @property
    def endpoint(self) -> str | None:
        return self.node.endpoint

    @property
    def node_id(self) -> int:
        return self.node.node_id

    def now(self) -> float:
        """The DHT clock, in which expiration times are given."""
        return self.node.now()

    def store(
        self,
        key: Any,
        value: Any,
        expiration_time: float,
        *,
        subkey: Any = None,
        timeout: float | None = None,
    ) -> bool:
        return self._call(self.node.store(key, value, expiration_time, subkey=subkey), timeout=timeout)

    def store_many(self, items: Sequence[StoreItem], *, timeout: float | None = None) -> list[bool]:
        return self._call(self.node.store_many(items), timeout=timeout)

    def get(
        self, key: Any, *, latest: bool = False, timeout: float | None = None
    ) -> ValueWithExpiration | None:
        """The value under ``key`` or None; see :meth:`DHTNode.get` and the module docstring."""
        return self._call(self.node.get(key, latest=latest, timeout=timeout), timeout=_with_grace(timeout))

    def get_many(
        self, keys: Sequence[Any], *, latest: bool = False, timeout: float | None = None
    ) -> list[ValueWithExpiration | None]:
        """Values for ``keys``; see :meth:`DHTNode.get_many` and the module docstring."""
        return self._call(
            self.node.get_many(keys, latest=latest, timeout=timeout), timeout=_with_grace(timeout)
        )

    def find_nearest(
        self, target: int, *, k: int | None = None, timeout: float | None = None
    ) -> list[Contact]:
        return self._call(self.node.find_nearest(target, k=k), timeout=timeout)

    def run(self, function: Callable[[DHTNode], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run ``await function(node)`` on the DHT's loop and return its result."""
        return self._call(function(self.node), timeout=timeout)  # type: ignore[arg-type]

    def shutdown(self) -> None:
        if self.bridge.loop.is_closed():
            return
        try:
            self._call(self.node.shutdown(), timeout=30)
        finally:
            self.bridge.close()

    def __enter__(self) -> DHT:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _call(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None) -> T:
        return self.bridge.run(coroutine, timeout=timeout)


def _with_grace(timeout: float | None) -> float | None:
    return None if timeout is None else timeout + GET_GRACE
