"""TaskPool: gathers the requests for one expert and one pass into batches.

Requests queue up; a runner takes as many as fit in ``max_batch_size`` samples, waiting up to
``max_wait`` seconds for more when the batch is not full, concatenates them, runs the batch
on the executor and hands every request its own slice of the result. Batching across clients
is what makes a busy expert efficient. The wait is adaptive: it is only worth paying while
requests actually overlap, so after a batch that caught a single request the pool stops
waiting, and tries again every ``PROBE_EVERY`` batches to notice when overlap returns.

Whatever goes wrong with one batch (the expert raises, or answers with the wrong number of
rows) fails that batch's requests with an error naming the problem, and the runner goes on
with the next batch: one bad batch never leaves an expert hanging until its clients time out.
The queue holds at most ``max_queued`` samples (remote peers fill it); a request that would
overflow it is refused at once with :class:`PoolFull`, so its client can ask another expert.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence

import torch

from .device import ComputeExecutor

logger = logging.getLogger(__name__)

Process = Callable[[list[torch.Tensor]], list[torch.Tensor]]
PROBE_EVERY = 8
QUEUED_BATCHES = 8
"""By default a pool queues at most this many full batches' worth of samples."""

_Request = tuple[list[torch.Tensor], "asyncio.Future[list[torch.Tensor]]"]


class PoolFull(RuntimeError):
    """The expert's queue is full: the request is refused without being queued."""


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
        max_queued: int | None = None,
    ) -> None:
        self.name = name
        self.process = process
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.flops_per_sample = flops_per_sample
        self.max_queued = max_queued if max_queued is not None else QUEUED_BATCHES * max_batch_size
        if self.max_queued < max_batch_size:
            raise ValueError(f"max_queued ({self.max_queued}) must hold a full batch ({max_batch_size})")
        self.batches = 0
        self.requests = 0
        self.refused = 0
        self.failed_batches = 0
        self.queued_samples = 0
        self._overlapping = True
        self._queue: deque[_Request] = deque()
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run ``tensors`` (one request's batch) as part of a batch; returns its outputs.

        Raises :class:`PoolFull` at once when the queue cannot take the request's samples."""
        size = tensors[0].shape[0]
        if self.queued_samples + size > self.max_queued:
            self.refused += 1
            raise PoolFull(
                f"{self.name} is overloaded: {self.queued_samples} samples queued, the limit is "
                f"{self.max_queued}; try another expert"
            )
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[list[torch.Tensor]] = asyncio.get_running_loop().create_future()
        self._queue.append((list(tensors), future))
        self.queued_samples += size
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
            batch = self._take_batch()
            try:
                await self._run_batch(batch)
            except Exception as error:  # the runner outlives any batch: fail it, serve the next
                self.failed_batches += 1
                logger.warning("%s failed a batch of %d request(s): %r", self.name, len(batch), error)
                failure = RuntimeError(f"{self.name} failed on this batch: {type(error).__name__}: {error}")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)

    def _take_batch(self) -> list[_Request]:
        batch = [self._queue.popleft()]
        size = batch[0][0][0].shape[0]
        while self._queue and size + self._queue[0][0][0].shape[0] <= self.max_batch_size:
            size += self._queue[0][0][0].shape[0]
            batch.append(self._queue.popleft())
        self.queued_samples -= size
        return batch

    async def _run_batch(self, batch: list[_Request]) -> None:
        batch = [(tensors, future) for tensors, future in batch if not future.done()]  # callers that gave up
        if not batch:
            return
        self._overlapping = len(batch) > 1
        sizes = [tensors[0].shape[0] for tensors, _ in batch]
        if len(batch) == 1:  # nothing to merge (or to split after): no copy
            merged = batch[0][0]
        else:
            merged = [torch.cat(column) for column in zip(*(tensors for tensors, _ in batch), strict=True)]
        self.batches += 1
        outputs = await self.executor.run(
            lambda: self.process(merged), flops=self.flops_per_sample * sum(sizes)
        )
        total = sum(sizes)
        rows = [output.shape[0] if output.dim() else None for output in outputs]
        if any(count != total for count in rows):
            raise ValueError(f"the expert returned {rows} rows for a batch of {total} samples")
        if len(batch) == 1:
            if not batch[0][1].done():
                batch[0][1].set_result(outputs)
            return
        pieces = [output.split(sizes) for output in outputs]
        for i, (_, future) in enumerate(batch):
            if not future.done():
                future.set_result([piece[i] for piece in pieces])
