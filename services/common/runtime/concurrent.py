"""ConcurrentStep: items handled concurrently (at most ``max_in_flight``), offsets
committed up to the longest finished prefix of each partition, so a crash re-handles at
most the items that were in flight and never skips an unfinished one."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Generic, TypeVar

from aiokafka import TopicPartition

from services.common.offsets import OffsetTracker
from services.common.runtime.records import Chunk

T = TypeVar("T")


class ConcurrentStep(Generic[T]):
    """The last step of a request/response consumer (the inference bridge).

    ``handler(tp, offset, item)`` must finish its own output (e.g. the response
    acknowledged by the broker) before it returns; an exception from it stops the
    consumer at the next ``poll`` without committing past the item. Dead letters count
    as finished once acknowledged. Offsets are committed every ``commit_interval_s``,
    and for revoked partitions before they leave."""

    def __init__(
        self,
        handler: Callable[[TopicPartition, int, T], Awaitable[None]],
        max_in_flight: int,
        consumer: Any,
        commit_interval_s: float,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.consumer = consumer
        self.commit_interval_s = commit_interval_s
        self.metrics = metrics
        self.clock = clock
        self.tracker = OffsetTracker()
        self.slots = asyncio.Semaphore(max_in_flight)
        self.tasks: set[asyncio.Task] = set()
        self.committed: dict[TopicPartition, int] = {}
        self.failure: BaseException | None = None
        self._last_commit = clock()

    @property
    def room(self) -> int:
        """Items that can start now (0: fetch nothing until a slot frees up)."""
        return max(0, self.max_in_flight - self.tracker.in_flight())

    async def submit(self, value: Chunk[T]) -> None:
        tp = value.tp
        starts = sorted([(o, i) for i, o in enumerate(value.item_offsets)] + [(o, -1) for o, _ in value.dead_letters])
        for offset, _ in starts:
            self.tracker.started(tp, offset)
        for offset, ack in value.dead_letters:
            ack.add_done_callback(lambda f, o=offset: self._finished(tp, o, f))
        for offset, i in starts:
            if i < 0:
                continue
            await self.slots.acquire()
            task = asyncio.create_task(self._run(tp, offset, value.items[i]))
            self.tasks.add(task)
            task.add_done_callback(self._task_done)

    async def _run(self, tp: TopicPartition, offset: int, item: T) -> None:
        await self.handler(tp, offset, item)
        self.tracker.finished(tp, offset)

    def _finished(self, tp: TopicPartition, offset: int, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            if self.failure is None:
                self.failure = fut.exception() or asyncio.CancelledError()
            return
        if self.tracker.in_flight(tp) or tp in self.tracker.committable():
            self.tracker.finished(tp, offset)

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.slots.release()
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()  # e.g. the broker refused the response: stop, don't commit

    async def poll(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.clock() - self._last_commit >= self.commit_interval_s:
            await self.commit()

    async def join(self) -> None:
        if self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        if self.failure is None:
            await self.commit()

    async def commit(self, only: list[TopicPartition] | None = None) -> None:
        self._last_commit = self.clock()
        if self.failure is not None:
            return
        assignment = self.consumer.assignment()
        offsets = {
            tp: o for tp, o in self.tracker.committable().items() if tp in assignment and (only is None or tp in only)
        }
        if offsets:
            await self.consumer.commit(offsets)
            self.committed.update(offsets)
            if self.metrics is not None:
                self.metrics.inc("argus_commits_total")

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        """Before partitions leave: finish their work, commit it, forget them."""
        if self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        if self.failure is None and revoked:
            await self.commit(revoked)
        self.tracker.forget(revoked)
        for tp in revoked:
            self.committed.pop(tp, None)
