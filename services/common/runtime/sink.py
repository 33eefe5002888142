"""SinkStep: one batch written while the next one fills; retried with backoff while the
store is down, with the consumer's partitions paused (memory stays bounded by two
batches) and the poll loop kept alive (the member stays in its group)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Generic, TypeVar

from services.common.runtime.records import Batch, Step

T = TypeVar("T")


class TransientError(Exception):
    """A failure worth retrying (store down, timeout): the batch is retried with backoff."""


RETRIED = (TransientError, OSError, asyncio.TimeoutError)


class SinkStep(Generic[T]):
    """Writes each batch's items with ``sink`` (an idempotent write), then hands the
    batch on (to commit its offsets). At most one batch is being written: ``submit``
    waits for the previous one, and while that one is failing it calls
    ``keep_polling()`` so the consumer stays in its group; anything a newly assigned
    partition delivers meanwhile joins the next batch. A failure other than
    :data:`RETRIED` is raised from the next ``submit``/``join``: nothing more is committed.
    """

    def __init__(
        self,
        sink: Callable[[list[T]], Awaitable[None]],
        next_step: Step[Batch[T]],
        *,
        initial_backoff_s: float,
        max_backoff_s: float,
        pause: Callable[[], set[Any]],
        resume: Callable[[set[Any]], None],
        keep_polling: Callable[[], Awaitable[None]] | None = None,
        metrics: Any = None,
        log: Any = None,
        name: str = "sink",
    ) -> None:
        self.sink = sink
        self.next_step = next_step
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.pause = pause
        self.resume = resume
        self.keep_polling = keep_polling
        self.metrics = metrics
        self.log = log
        self.name = name
        self.healthy = True
        self._in_flight: asyncio.Task | None = None

    async def submit(self, value: Batch[T]) -> None:
        await self._wait_in_flight()
        self._in_flight = asyncio.create_task(self._complete(value))

    async def poll(self) -> None:
        task = self._in_flight
        if task is not None and task.done():
            self._in_flight = None
            await task  # raises a failure of the last write
        await self.next_step.poll()

    async def join(self) -> None:
        await self._wait_in_flight()
        await self.next_step.join()

    async def _wait_in_flight(self) -> None:
        task = self._in_flight
        if task is None:
            return
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            if not task.done() and not self.healthy and self.keep_polling is not None:
                await self.keep_polling()
        if self._in_flight is task:
            self._in_flight = None
        await task

    async def _complete(self, batch: Batch[T]) -> None:
        if batch.items:
            await self._write(batch)
        await self.next_step.submit(batch)

    async def _write(self, batch: Batch[T]) -> None:
        backoff = self.initial_backoff_s
        paused: set[Any] = set()
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                await self.sink(batch.items)
            except RETRIED as exc:
                if self.metrics is not None:
                    self.metrics.inc("argus_sink_retries_total", sink=self.name)
                if self.log is not None:
                    self.log.warning("pipeline.sink_retry", attempt=attempt, backoff_s=backoff, error=repr(exc))
                if not paused:
                    paused = self.pause()  # no more fetching until the store is back: memory stays bounded
                self.healthy = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.healthy = True
            if self.metrics is not None:
                self.metrics.observe("argus_sink_seconds", time.perf_counter() - started, sink=self.name)
            if paused:
                self.resume(paused)
            return
