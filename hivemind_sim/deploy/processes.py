"""One deployed peer: a real ``hivemind-core`` process, its signals, and the records it sends.

The process runs with ``--operator`` (see ``hivemind_core.operator``): the deployer asks it for
DHT operations on its stdin and reads its measurements from its stdout. Its other output, and
its stderr, go to its log file. A restart starts a new process with the same identity file and
port, as a real peer's restart does, so its node id and address stay the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from hivemind_core.operator import PREFIX

logger = logging.getLogger(__name__)

Record = dict[str, Any]


class PeerDown(RuntimeError):
    """The peer's process was not running, or ended before it answered."""


class PeerProcess:
    """A deployed peer's current process (if any) and what it said."""

    def __init__(
        self,
        name: str,
        argv: Callable[[Sequence[str]], list[str]],
        *,
        log_path: Path,
        on_record: Callable[[str, Record], None],
        on_exit: Callable[[str, int], None],
    ) -> None:
        """``argv(initial_peers)``: the command line of a new process of this peer;
        ``on_record(name, record)``: a measurement it sent; ``on_exit(name, code)``: its process
        ended on its own (not by :meth:`kill`, :meth:`stop` or :meth:`terminate`)."""
        self.name = name
        self._argv = argv
        self.log_path = log_path
        self._on_record = on_record
        self._on_exit = on_exit
        self.process: asyncio.subprocess.Process | None = None
        self.endpoint: str | None = None
        self.node_id: int | None = None
        self.frozen = False
        self.starts = 0
        self._ready: asyncio.Future[None] | None = None
        self._replies: dict[int, asyncio.Future[Record]] = {}
        self._ids = itertools.count()
        self._reader: asyncio.Task[None] | None = None
        self._expected_exit = False
        self._starting = False
        self._log: IO[bytes] | None = None

    @property
    def up(self) -> bool:
        """Its process runs (a frozen one too: it is alive, only stopped)."""
        return self.process is not None and self.process.returncode is None

    @property
    def leaving(self) -> bool:
        """It was told to stop (killed or terminated) and its process has not ended yet."""
        return self.up and self._expected_exit

    @property
    def starting(self) -> bool:
        """A :meth:`start` is in progress."""
        return self._starting

    async def start(self, initial_peers: Sequence[str], *, timeout: float) -> None:
        """Start a process and wait until it has joined; raises ``PeerDown`` if it does not."""
        if self.up or self._starting:
            raise RuntimeError(f"{self.name} is already running")
        self._starting = True
        try:
            await self._start(initial_peers, timeout)
        finally:
            self._starting = False

    async def _start(self, initial_peers: Sequence[str], timeout: float) -> None:
        self.starts += 1
        self._log = self.log_path.open("ab")
        self._log.write(f"--- start {self.starts} at {time.time():.3f}\n".encode())
        self._log.flush()
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._expected_exit, self.frozen = False, False
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = await asyncio.create_subprocess_exec(
            *self._argv(initial_peers),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,  # a Ctrl-C at the terminal reaches the deployer only
        )
        self._reader = loop.create_task(self._read(self.process))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            self.kill()
            raise PeerDown(f"{self.name} did not join within {timeout:g} s (see {self.log_path})") from None

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None and self._log is not None
        log = self._log
        while line := await process.stdout.readline():
            text = line.decode(errors="replace")
            if not text.startswith(PREFIX):
                log.write(line)
                log.flush()
                continue
            try:
                record = json.loads(text[len(PREFIX) :])
                self._handle(record)
            except (KeyError, TypeError, ValueError, AttributeError):  # a record we cannot use: go on reading
                logger.warning("%s sent an unreadable record: %r", self.name, text[:200])
        code = await process.wait()
        log.write(f"--- exit {code} at {time.time():.3f}\n".encode())
        log.close()
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(PeerDown(f"{self.name} ended"))
        self._replies.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(PeerDown(f"{self.name} ended before it joined (see {self.log_path})"))
            self._ready.exception()  # retrieved here: start() may already have given up
        if not self._expected_exit:
            self._on_exit(self.name, code)

    def _handle(self, record: Record) -> None:
        if "ready" in record:
            ready = record["ready"]
            self.endpoint = ready.get("endpoint")
            self.node_id = int(ready["node_id"], 16)
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif "id" in record:
            reply = self._replies.pop(record["id"], None)
            if reply is not None and not reply.done():
                reply.set_result(record)
        else:
            self._on_record(self.name, record)

    async def ask(self, command: Record) -> Record:
        """Send a command and wait for its reply; raises ``PeerDown`` if the process ends first."""
        if not self.up or self.process is None or self.process.stdin is None:
            raise PeerDown(f"{self.name} is down")
        request = next(self._ids)
        reply: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self._replies[request] = reply
        self.send({**command, "id": request})
        return await reply

    def send(self, command: Record) -> None:
        """Send a command that has no reply (``train``); nothing happens if the peer is down."""
        if self.up and self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                self.process.stdin.write((json.dumps(command) + "\n").encode())

    # ---- signals ---------------------------------------------------------------------------------

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """A crash: SIGKILL, nothing handed on."""
        self._expected_exit = True
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        """A graceful leave: SIGTERM (the peer hands its records on and checkpoints its experts)."""
        self._expected_exit = True
        if self.frozen:
            self.thaw()  # a stopped process cannot handle SIGTERM until it runs again
        self._signal(signal.SIGTERM)

    def freeze(self) -> None:
        """SIGSTOP: the process and its sockets stay, nothing is read or answered."""
        self.frozen = True
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.frozen = False
        self._signal(signal.SIGCONT)

    async def wait(self, timeout: float) -> None:
        """Wait for the current process to end (SIGKILL when ``timeout`` runs out) and its output
        to be read."""
        if self.process is None:
            return
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            logger.warning("%s did not stop within %g s of SIGTERM: killed", self.name, timeout)
            self.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader


def core_argv(*args: str) -> list[str]:
    """``hivemind-core`` run by this interpreter (the deployer's environment)."""
    return [sys.executable, "-m", "hivemind_core.cli", *args]
