"""A well-behaved client that keeps calling a peer while a test abuses it, and notes what failed."""

from __future__ import annotations

import asyncio
from typing import Any

from hivemind_core.net import RPC, TcpTransport


class GoodClient:
    """Calls the server in a loop from 127.0.0.1 for as long as a test runs; records failures.

    With ``new_peer_each_call`` every call comes from a new transport, as a peer joining would.
    """

    def __init__(self, server: str, *, method: str = "echo", body: Any = 1, new_peer_each_call: bool = False):
        self.server = server
        self.method = method
        self.body = body
        self.new_peer_each_call = new_peer_each_call
        self.rpc = RPC(TcpTransport())
        self.successes = 0
        self.failures: list[BaseException] = []
        self._served = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _call(self) -> Any:
        if not self.new_peer_each_call:
            return await self.rpc.call(self.server, self.method, self.body, timeout=5)
        newcomer = RPC(TcpTransport())
        try:
            return await newcomer.call(self.server, self.method, self.body, timeout=5)
        finally:
            await newcomer.transport.close()

    async def _run(self) -> None:
        while True:
            try:
                await self._call()
                self.successes += 1
                self._served.set()
            except Exception as error:
                self.failures.append(error)
            await asyncio.sleep(0.002)  # pacing, so the client does not hog the loop

    async def served_again(self) -> None:
        """Wait for a call that succeeds after this one began."""
        self._served.clear()
        await asyncio.wait_for(self._served.wait(), timeout=5)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.rpc.transport.close()
        assert not self.failures, f"a well-behaved client was disturbed: {self.failures[:3]}"
