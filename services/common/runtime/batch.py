"""BatchStep: chunks -> batches, handed on by size or by age."""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Generic, TypeVar

from services.common.runtime.records import Batch, Chunk, Step

T = TypeVar("T")


class BatchStep(Generic[T]):
    """Gathers chunks into a :class:`Batch` and hands it on once it holds
    ``max_messages`` messages (dead letters count: their offsets are part of the batch)
    or, at a ``poll``, is ``max_seconds`` old (counted from the previous hand-over, so
    the first message after a quiet spell goes out at once).

    One hand-over at a time: while a batch is being handed on (the next step may wait for
    the previous write, polling meanwhile), chunks that arrive join the next batch; a
    ``join`` from another task (a rebalance) waits for the hand-over in progress, then
    hands on the rest and joins the next steps, so it returns only when everything read
    so far is written and committed."""

    def __init__(
        self,
        max_messages: int,
        max_seconds: float,
        next_step: Step[Batch[T]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_messages = max_messages
        self.max_seconds = max_seconds
        self.next_step = next_step
        self.clock = clock
        self.batch: Batch[T] = Batch(started=clock())
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task | None = None  # the task handing on (its own re-entrant calls are skipped)

    @property
    def room(self) -> int:
        """Messages the current batch can still take (at least 1: fetches never stop)."""
        return max(1, self.max_messages - self.batch.messages)

    async def submit(self, value: Chunk[T]) -> None:
        self.batch.add(value)
        if self.batch.messages >= self.max_messages:
            await self._hand_on()

    async def poll(self) -> None:
        if self.batch.messages and self.clock() - self.batch.started >= self.max_seconds:
            await self._hand_on()
        await self.next_step.poll()

    async def join(self) -> None:
        """Hand on what was gathered and let the next steps finish."""
        if self._owner is asyncio.current_task():
            return  # called back from within our own hand-over
        async with self._lock:
            self._owner = asyncio.current_task()
            try:
                if self.batch.messages:
                    batch, self.batch = self.batch, Batch(started=self.clock())
                    await self.next_step.submit(batch)
                await self.next_step.join()
            finally:
                self._owner = None

    def discard(self) -> None:
        """Drop what was gathered (its offsets are not committed: it is read again)."""
        self.batch = Batch(started=self.clock())

    async def _hand_on(self) -> None:
        if self._owner is asyncio.current_task():
            return  # called back from within our own hand-over: the next one takes it
        async with self._lock:
            if not self.batch.messages:
                return  # handed on meanwhile (by a join)
            self._owner = asyncio.current_task()
            batch, self.batch = self.batch, Batch(started=self.clock())
            try:
                await self.next_step.submit(batch)
            finally:
                self._owner = None
