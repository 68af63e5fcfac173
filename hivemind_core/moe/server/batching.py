"""TaskPool: gathers the requests for one expert and one pass into batches.

Requests queue up; a runner takes as many as fit in ``max_batch_size`` samples, waiting up to
``max_wait`` seconds for more when the batch is not full, concatenates them, runs the batch
on the executor and hands every request its own slice of the result. Batching across clients
is what makes a busy expert efficient. The wait is adaptive: it is only worth paying while
requests actually overlap, so after a batch that caught a single request the pool stops
waiting, and tries again every ``PROBE_EVERY`` batches to notice when overlap returns.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence

import torch

from .device import ComputeExecutor

Process = Callable[[list[torch.Tensor]], list[torch.Tensor]]
PROBE_EVERY = 8


class TaskPool:
    """Batches requests for one process function (an expert's forward or backward)."""

    def __init__(
        self,
        name: str,
        process: Process,
        *,
        executor: ComputeExecutor,
        max_batch_size: int,
        max_wait: float,
        flops_per_sample: float,
    ) -> None:
        self.name = name
        self.process = process
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.flops_per_sample = flops_per_sample
        self.batches = 0
        self.requests = 0
        self._overlapping = True
        self._queue: deque[tuple[list[torch.Tensor], asyncio.Future[list[torch.Tensor]]]] = deque()
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    @property
    def queued_samples(self) -> int:
        return sum(tensors[0].shape[0] for tensors, _ in self._queue)

    async def submit(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run ``tensors`` (one request's batch) as part of a batch; returns its outputs."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[list[torch.Tensor]] = asyncio.get_running_loop().create_future()
        self._queue.append((list(tensors), future))
        self.requests += 1
        self._arrived.set()
        return await future

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for _, future in self._queue:
            if not future.done():
                future.set_exception(RuntimeError(f"{self.name} is shutting down"))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            wait = self._overlapping or self.batches % PROBE_EVERY == 0
            deadline = loop.time() + (self.max_wait if wait else 0.0)
            while self.queued_samples < self.max_batch_size and loop.time() < deadline:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout=deadline - loop.time())
                except TimeoutError:
                    break
            await self._run_batch(self._take_batch())

    def _take_batch(self) -> list[tuple[list[torch.Tensor], asyncio.Future[list[torch.Tensor]]]]:
        batch = [self._queue.popleft()]
        size = batch[0][0][0].shape[0]
        while self._queue and size + self._queue[0][0][0].shape[0] <= self.max_batch_size:
            size += self._queue[0][0][0].shape[0]
            batch.append(self._queue.popleft())
        return batch

    async def _run_batch(
        self, batch: list[tuple[list[torch.Tensor], asyncio.Future[list[torch.Tensor]]]]
    ) -> None:
        batch = [(tensors, future) for tensors, future in batch if not future.done()]  # callers that gave up
        if not batch:
            return
        self._overlapping = len(batch) > 1
        sizes = [tensors[0].shape[0] for tensors, _ in batch]
        merged = [torch.cat(column) for column in zip(*(tensors for tensors, _ in batch), strict=True)]
        self.batches += 1
        try:
            outputs = await self.executor.run(
                lambda: self.process(merged), flops=self.flops_per_sample * sum(sizes)
            )
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        pieces = [output.split(sizes) for output in outputs]
        for i, (_, future) in enumerate(batch):
            if not future.done():
                future.set_result([piece[i] for piece in pieces])
