"""Emulated network delays for the TCP transport, for deployments on kernels without ``netem``.

``hivemind-sim deploy`` runs real peers on one machine (loopback, or network namespaces) and
wants the scenario topology's latency between them. Where the kernel cannot delay packets
(``tc netem``), each peer is handed a table of one-way delays (``--emulate-delays FILE``) and
its :class:`~hivemind_core.net.tcp.TcpTransport` holds frames back in user space. Nothing here
is on by default: a transport without a table behaves and costs exactly as before.

**Who delays what.** Every connection is delayed by the peer that dialled it, both ways: what
it sends is held ``there`` seconds before it is written, what it receives ``back`` seconds
before it is read, and its set-up takes ``there + back`` (the SYN out, the SYN-ACK back). The
accepting side delays nothing. The dialler is the one side that knows whom it talks to: the
other only sees the caller's ephemeral port, which on loopback (every peer on ``127.0.0.1``)
says nothing about who is calling. So a round trip from ``a`` to ``b`` takes
``d(a→b) + d(b→a)`` on top of the real network whichever side dialled, and each direction's
delay is applied once.

The table, as JSON::

    {"default": 0.0,
     "endpoints": {"127.0.0.1:7001": 0.04, "127.0.0.1:7002": [0.03, 0.05]},
     "hosts": {"10.77.0.3": 0.05}}

A destination is looked up by endpoint, then by host, then falls back to ``default``. A
number is the one-way delay each way (the topology's latencies are symmetric); a pair
``[there, back]`` gives the two directions when they differ.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from .endpoints import canonical_host, parse_endpoint
from .transport import Endpoint

MAX_DELAY = 60.0
"""The longest delay a table may give (seconds): more is a mistake in units, not a network."""

T = TypeVar("T")


@dataclass(frozen=True)
class Delay:
    """One destination's one-way delays in seconds: on the way ``there`` and on the way ``back``."""

    there: float = 0.0
    back: float = 0.0

    def __bool__(self) -> bool:
        return self.there > 0 or self.back > 0

    @property
    def round_trip(self) -> float:
        return self.there + self.back


_NONE = Delay()


def _frozen(mapping: Mapping[str, Delay]) -> Mapping[str, Delay]:
    return types.MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class EmulatedDelays:
    """One-way delays per destination: by endpoint, else by host, else ``default``."""

    default: Delay = _NONE
    endpoints: Mapping[Endpoint, Delay] = field(default_factory=lambda: _frozen({}))
    """By canonical endpoint (``host:port``): peers sharing one host (loopback)."""
    hosts: Mapping[str, Delay] = field(default_factory=lambda: _frozen({}))
    """By canonical host: peers with an address of their own (network namespaces)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", _frozen(self.endpoints))
        object.__setattr__(self, "hosts", _frozen(self.hosts))

    def to(self, endpoint: Endpoint) -> Delay:
        """The delays on a connection dialled to ``endpoint``."""
        delay = self.endpoints.get(endpoint)
        if delay is not None:
            return delay
        try:
            host = canonical_host(parse_endpoint(endpoint)[0])
        except ValueError:
            return self.default
        return self.hosts.get(host, self.default)

    @classmethod
    def from_json(cls, data: Any, *, source: str = "the delay table") -> EmulatedDelays:
        """The table in ``data`` (parsed JSON); ValueError naming ``source`` and the bad key."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"default", "endpoints", "hosts"})
        if unknown:
            raise ValueError(f"{source}: unknown key {unknown[0]!r} (expected default, endpoints, hosts)")
        default = _delay(data.get("default", 0.0), source, "default")
        endpoints = {
            _endpoint_key(key, source): _delay(value, source, f"endpoints.{key}")
            for key, value in _table(data, "endpoints", source).items()
        }
        hosts = {
            _host_key(key, source): _delay(value, source, f"hosts.{key}")
            for key, value in _table(data, "hosts", source).items()
        }
        return cls(default=default, endpoints=endpoints, hosts=hosts)


def load_delays(path: str | Path) -> EmulatedDelays:
    """The table in the JSON file at ``path``; ValueError naming the file and what is wrong."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{source}: cannot read the delay table ({error.strerror or error})") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{source}: not JSON ({error})") from None
    return EmulatedDelays.from_json(data, source=source)


def _table(data: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise ValueError(f"{source}: {key!r} must be an object of delays, got {type(table).__name__}")
    return table


def _endpoint_key(key: str, source: str) -> Endpoint:
    try:
        parse_endpoint(key)
    except ValueError as error:
        raise ValueError(f"{source}: endpoints.{key}: {error}") from None
    return key


def _host_key(key: str, source: str) -> str:
    host = key[1:-1] if key.startswith("[") and key.endswith("]") else key
    try:
        parse_endpoint(f"[{host}]:1" if ":" in host else f"{host}:1")
    except ValueError as error:
        raise ValueError(f"{source}: hosts.{key}: {error}") from None
    return canonical_host(host)


def _delay(value: Any, source: str, key: str) -> Delay:
    """A number (both ways) or a pair ``[there, back]`` of seconds in ``[0, MAX_DELAY]``."""
    pair = value if isinstance(value, list) else [value, value]
    if len(pair) != 2 or not all(_seconds(x) for x in pair):
        raise ValueError(
            f"{source}: {key}: expected seconds from 0 to {MAX_DELAY:g}, or a pair [there, back] of "
            f"them, got {value!r}"
        )
    return Delay(float(pair[0]), float(pair[1]))


def _seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= MAX_DELAY
    )


class DelayLine(Generic[T]):
    """Hands items to ``deliver`` ``delay`` seconds after they were pushed, in push order.

    One timer at a time, for the oldest item (equal deadlines in the loop's timer heap would
    not keep their order): items of one connection never overtake each other.
    """

    def __init__(self, delay: float, deliver: Callable[[T], None]) -> None:
        self.delay = delay
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._items: collections.deque[tuple[float, T]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T) -> None:
        due = self._loop.time() + self.delay
        self._items.append((due, item))
        if self._timer is None:
            self._timer = self._loop.call_at(due, self._flush)

    def close(self) -> None:
        """Drop what is still held (the connection is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._items.clear()

    def _flush(self) -> None:
        self._timer = None
        items = self._items
        try:
            while items and items[0][0] <= self._loop.time():
                self._deliver(items.popleft()[1])
        finally:
            if items and self._timer is None:
                self._timer = self._loop.call_at(items[0][0], self._flush)
