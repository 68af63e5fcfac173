"""A peer driven by the process that started it (``--operator``), as ``hivemind-sim deploy`` does.

The peer reads one JSON command per line on stdin and writes what it did as lines on stdout
that start with ``@hm `` followed by one JSON object, next to its ordinary output (which the
deployer keeps as the peer's log). Only the parent process holds the pipes, so nothing here
listens on the network; when stdin closes (the parent ended, even by SIGKILL), the peer stops
as on SIGTERM instead of running on as an orphan. Records carry ``t``, the wall-clock time
(``time.time()``) at which an operation ended, so a peer frozen with SIGSTOP reports its late
steps at their true time.

Commands (``id`` is echoed in the reply)::

    {"id": 1, "op": "store", "key": "key5", "size": 1024, "ttl": 1800}
    {"id": 2, "op": "get", "key": "key5"}
    {"id": 3, "op": "lookup", "target": "<40 hex digits>"}
    {"op": "train"}         # trainers start training when told (a deployment's window opens)

Records::

    {"ready": {"endpoint": "127.0.0.1:7001" or null, "node_id": "<hex>"}}
    {"id": 1, "t": ..., "ok": true, "latency": 0.012}              # a reply
    {"id": 3, ..., "converged": true, "rounds": 3, "nearest": ["<hex>", ...]}
    {"t": ..., "event": "moe.step", "ok": true, "latency": 0.31}   # the names scenario reports use
    {"t": ..., "value": "train.loss", "v": 0.71}
    {"t": ..., "count": "moe.bans", "n": 1}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from typing import Any

from .dht import DHTNode, StoreItem

logger = logging.getLogger(__name__)

PREFIX = "@hm "
MAX_COMMAND_BYTES = 4096
"""A command is a short JSON object; a longer line is refused, not buffered."""
MAX_VALUE_SIZE = 1 << 20
"""The largest value a ``store`` command may ask for."""


class Operator:
    """Writes records to stdout and carries out the parent's commands through ``node``."""

    def __init__(self, node: DHTNode, parent_gone: asyncio.Event | None = None) -> None:
        """``parent_gone`` is set when stdin closes: the process that drove this peer has ended
        (or let it go), and a peer nobody drives stops rather than run on as an orphan."""
        self.node = node
        self.parent_gone = parent_gone
        self.train = asyncio.Event()
        """Set by the ``train`` command."""
        self._write_lock = threading.Lock()  # training threads write records too
        self._reader: asyncio.Task[None] | None = None
        self._operations: set[asyncio.Task[None]] = set()
        self.client: Any = None
        """A trainer's MoE client: each step reports the bans it added since the last."""
        self._bans = 0
        self._bans_lock = threading.Lock()

    def record(self, **fields: Any) -> None:
        """Write one record (from any thread)."""
        line = PREFIX + json.dumps(fields, separators=(",", ":")) + "\n"
        with self._write_lock:
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):  # the parent is gone: nobody reads any more
                pass

    def start(self) -> None:
        """Say where this peer is, then read commands until stdin closes."""
        endpoint = self.node.endpoint
        self.record(ready={"endpoint": endpoint, "node_id": f"{self.node.node_id:040x}"})
        self._reader = asyncio.get_running_loop().create_task(self._read_commands())

    async def close(self) -> None:
        for task in [self._reader, *self._operations]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._reader, *self._operations] if t], return_exceptions=True)

    async def _read_commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_COMMAND_BYTES)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # over the limit: StreamReader drops the line
                logger.warning("operator: a command over %d bytes was refused", MAX_COMMAND_BYTES)
                continue
            if not line:  # the parent closed our stdin, or died
                if self.parent_gone is not None:
                    self.parent_gone.set()
                return
            try:
                command = json.loads(line)
                if not isinstance(command, dict):
                    raise ValueError("a command is a JSON object")
            except ValueError as error:
                logger.warning("operator: an unreadable command was refused: %s", error)
                continue
            if command.get("op") == "train":
                self.train.set()
                continue
            task = loop.create_task(self._carry_out(command))
            self._operations.add(task)
            task.add_done_callback(self._operations.discard)

    async def _carry_out(self, command: dict[str, Any]) -> None:
        began = time.monotonic()
        op, reply_to = command.get("op"), command.get("id")
        extra: dict[str, Any] = {}
        ok = False
        try:
            if op == "store":
                size = int(command["size"])
                if not 0 <= size <= MAX_VALUE_SIZE:
                    raise ValueError(f"size {size} is not in [0, {MAX_VALUE_SIZE}]")
                item = StoreItem(str(command["key"]), b"v" * size, self.node.now() + float(command["ttl"]))
                stored = await self.node.store_many([item])
                ok = bool(stored and stored[0])
            elif op == "get":
                ok = await self.node.get(str(command["key"])) is not None
            elif op == "lookup":
                target = int(str(command["target"]), 16)
                result = (await self.node.lookup([target]))[target]
                ok = result.converged
                extra = {
                    "converged": result.converged,
                    "rounds": result.rounds,
                    "nearest": [f"{contact.node_id:040x}" for contact in result.nearest],
                }
            else:
                raise ValueError(f"unknown op {op!r}")
        except (KeyError, TypeError, ValueError) as error:
            logger.warning("operator: command %s refused: %s", reply_to, error)
            extra = {"error": str(error)}
        except Exception as error:  # the operation failed (peers gone, timeouts): a failed operation
            logger.debug("operator: %s failed: %s", op, error)
        self.record(id=reply_to, t=time.time(), ok=ok, latency=time.monotonic() - began, **extra)

    # ---- a trainer's measurements (the interface of prometheus.PeerMetrics) ------------------------

    def step(self, seconds: float, loss: float | None) -> None:
        now = time.time()
        self.record(t=now, event="moe.step", ok=loss is not None, latency=seconds)
        if loss is not None:
            self.record(t=now, value="train.loss", v=loss)
        if self.client is not None:
            self.bans(self.client.bans)

    def expert_call(self, outcome: str, seconds: float) -> None:
        now = time.time()
        self.record(t=now, event="moe.expert_call", ok=outcome == "answered", latency=seconds)
        if outcome in ("failed", "rejected"):
            self.record(t=now, count="moe.expert_failures", n=1)
        if outcome == "rejected":
            self.record(t=now, count="moe.rejected", n=1)

    def bans(self, total: int) -> None:
        """The client's ban count so far: records what was added since the last call."""
        with self._bans_lock:
            added, self._bans = total - self._bans, max(total, self._bans)
        if added > 0:
            self.record(t=time.time(), count="moe.bans", n=added)


class Metrics:
    """Sends a trainer's measurements to several sinks (Prometheus and the operator)."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = [sink for sink in sinks if sink is not None]

    def step(self, seconds: float, loss: float | None) -> None:
        for sink in self.sinks:
            sink.step(seconds, loss)

    def expert_call(self, outcome: str, seconds: float) -> None:
        for sink in self.sinks:
            sink.expert_call(outcome, seconds)


@contextlib.asynccontextmanager
async def operated(node: DHTNode, enabled: bool, stop: asyncio.Event):  # type: ignore[no-untyped-def]
    """An :class:`Operator` for ``node`` while the block runs (``stop`` is set when its parent
    goes), or None when not ``enabled``."""
    if not enabled:
        yield None
        return
    operator = Operator(node, stop)
    operator.start()
    try:
        yield operator
    finally:
        await operator.close()
