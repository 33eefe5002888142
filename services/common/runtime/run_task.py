"""RunTaskStep: each item handled in order, one at a time; the chunk's offsets are
committed once its items are handled and its dead letters acknowledged."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Generic, TypeVar

from services.common.runtime.records import Chunk

T = TypeVar("T")


class RunTaskStep(Generic[T]):
    """For consumers whose work is small and ordered (retraining's evidence: each drift
    event or alert may propose a trigger). An exception from ``handler`` propagates: the
    offset is not committed and the record is read again after a restart."""

    def __init__(
        self, handler: Callable[[T], Awaitable[None]], consumer: Any, metrics: Any = None, commit: bool = True
    ) -> None:
        self.handler = handler
        self.consumer = consumer
        self.metrics = metrics
        self.commit = commit  # False for a reader without a consumer group (state topics)
        self.committed: dict[Any, int] = {}

    async def submit(self, value: Chunk[T]) -> None:
        for item in value.items:
            await self.handler(item)
        if value.dead_letters:
            await asyncio.gather(*(ack for _, ack in value.dead_letters))
        if self.commit and value.tp in self.consumer.assignment():
            await self.consumer.commit({value.tp: value.next_offset})
            self.committed[value.tp] = value.next_offset
            if self.metrics is not None:
                self.metrics.inc("argus_commits_total")

    async def poll(self) -> None:
        return None

    async def join(self) -> None:
        return None
