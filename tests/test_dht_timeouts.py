"""One meaning for ``timeout``: it bounds the whole call, and a call that runs out is cancelled.

``DHT.get(timeout=)`` returns what the node found when the time is up (as ``DHTNode.get``
does); any bridge call that outlives its timeout is cancelled on the loop before
``TimeoutError`` reaches the caller. Real threads and loopback TCP only: that is where the
bridge lives.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hivemind_core.bridge import LoopThread
from hivemind_core.dht import DHT, DHTNode


@pytest.fixture
def bridge() -> Iterator[LoopThread]:
    bridge = LoopThread(name="test-bridge")
    yield bridge
    bridge.close()


def test_a_timed_out_call_is_cancelled_before_timeout_error_is_raised(bridge: LoopThread) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 s and was cancelled"):
        bridge.run(forever(), timeout=0.05)
    assert started.is_set() and cancelled.is_set(), "the coroutine was still running after the timeout"
    assert bridge.run(_answer(), timeout=5) == 42, "the loop keeps serving"


def test_waiting_for_a_cancellation_is_bounded(bridge: LoopThread) -> None:
    """A coroutine that refuses to stop cannot hold the caller past ``cancel_grace``."""
    bridge.cancel_grace = 0.05
    release, finished = asyncio.Event(), threading.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue
        finished.set()

    with pytest.raises(TimeoutError):
        bridge.run(stubborn(), timeout=0.05)
    bridge.loop.call_soon_threadsafe(release.set)
    assert finished.wait(timeout=10)


def test_outcomes_and_errors_reach_the_caller(bridge: LoopThread) -> None:
    assert bridge.run(_answer()) == 42

    async def fail() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        bridge.run(fail(), timeout=5)
    with pytest.raises(TypeError):
        bridge.run(42, timeout=5)  # type: ignore[arg-type]


async def _answer() -> int:
    return 42


async def _freeze_find(node: DHTNode) -> None:
    """Make ``node`` accept dht.find requests and never answer them (until cancelled)."""

    async def hang(peer: str, body: Any) -> Any:
        await asyncio.Event().wait()

    node.rpc.unregister("dht.find")
    node.rpc.register("dht.find", hang)


def test_facade_get_returns_what_it_found_when_its_timeout_passes() -> None:
    with (
        DHT() as first,
        DHT(initial_peers=[first.endpoint]) as frozen,
        DHT(initial_peers=[first.endpoint], client_mode=True) as reader,
    ):
        assert first.store("key", "value", first.now() + 60)
        frozen.run(_freeze_find)
        # with latest=True the reader waits for every replica; the frozen one never answers
        # and only misses its RPC deadline (3 s) after the call's own timeout
        found = reader.get("key", latest=True, timeout=0.5)
        assert found is not None and found.value == "value"
        [many] = reader.get_many(["key"], latest=True, timeout=0.5)
        assert many is not None and many.value == "value"
        with pytest.raises(ValueError, match="timeout must be positive"):
            reader.get("key", timeout=0)


def test_closing_a_loop_thread_cancels_what_still_runs_on_it() -> None:
    bridge = LoopThread()
    cancelled = threading.Event()

    started = threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    bridge.loop.call_soon_threadsafe(lambda: bridge.loop.create_task(forever()))
    assert started.wait(timeout=60)
    bridge.close()
    assert cancelled.is_set() and bridge.loop.is_closed()
