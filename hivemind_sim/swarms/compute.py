"""Simulated compute: expert batches run for real, but take modelled virtual time.

A batch runs inline on the simulation thread (so its results are real and reproducible),
then the caller waits the virtual time the device model says it took, queued FIFO behind
the device's earlier batches, exactly like a real device thread would serialize them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from hivemind_core.moe.server.device import ComputeExecutor

T = TypeVar("T")


@dataclass(frozen=True)
class DeviceModel:
    """How fast a simulated device computes."""

    flops: float = 10e12
    """Sustained floating-point operations per second."""
    overhead: float = 50e-6
    """Fixed cost of launching one batch, in seconds."""

    def __post_init__(self) -> None:
        if not self.flops > 0 or self.overhead < 0:
            raise ValueError(f"a device needs flops > 0 and overhead >= 0, got {self}")


class SimulatedDevice(ComputeExecutor):
    """Runs batches inline and charges their modelled duration in virtual time."""

    def __init__(self, model: DeviceModel | None = None) -> None:
        self.model = model or DeviceModel()
        self.slowdown = 1.0
        """Multiplies the duration of batches started from now on (see ``slow_down``)."""
        self.busy_until = 0.0
        self.busy_seconds = 0.0

    def slow_down(self, factor: float) -> None:
        """Batches started from now on take ``factor`` times their modelled time (a throttled
        or shared GPU); batches already running keep theirs. Not cumulative: it sets the factor,
        and ``restore`` sets it back to 1."""
        if not (isinstance(factor, int | float) and 0 < factor < math.inf):
            raise ValueError(f"a slow-down factor must be a finite number > 0, got {factor!r}")
        self.slowdown = float(factor)

    def restore(self) -> None:
        """Full speed again for batches started from now on."""
        self.slowdown = 1.0

    async def run(self, function: Callable[[], T], *, flops: float) -> T:
        now = asyncio.get_running_loop().time()
        duration = (self.model.overhead + flops / self.model.flops) * self.slowdown
        start = max(now, self.busy_until)
        self.busy_until = start + duration
        self.busy_seconds += duration
        result = function()
        await asyncio.sleep(self.busy_until - now)
        return result

    async def close(self) -> None:
        """Nothing to release: batches run inline."""
