"""Where expert computation runs: the ComputeExecutor interface and its real-mode thread.

An expert server never computes on its event loop: it hands each batch to an executor. In
real mode that is :class:`DeviceThread`, one worker thread per device (torch releases the
GIL, so the loop keeps serving the network meanwhile). Simulations run batches inline and
advance virtual time by a modelled duration instead (``hivemind_sim.swarms.compute``).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ComputeExecutor(abc.ABC):
    """Runs expert batches one at a time, off the event loop."""

    @abc.abstractmethod
    async def run(self, function: Callable[[], T], *, flops: float) -> T:
        """Run ``function``; ``flops`` estimates its cost (used by simulated devices)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the executor's resources."""


class DeviceThread(ComputeExecutor):
    """One worker thread per device, so batches on a device never overlap."""

    def __init__(self, name: str = "device") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hivemind-{name}")

    async def run(self, function: Callable[[], T], *, flops: float) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
