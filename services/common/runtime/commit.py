"""CommitStep: a batch's dead letters acknowledged, then its offsets committed."""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from aiokafka.errors import CommitFailedError

from services.common.runtime.records import Batch

T = TypeVar("T")


class CommitStep(Generic[T]):
    """The last step of a batching consumer. Offsets of partitions this member no
    longer holds are left to their new owner; a commit refused because the group
    rebalanced meanwhile is logged (the new owner re-reads from the last commit and the
    idempotent sink absorbs the overlap). ``committed`` is what this member committed."""

    def __init__(self, consumer: Any, metrics: Any = None, log: Any = None, topic: str = "") -> None:
        self.consumer = consumer
        self.metrics = metrics
        self.log = log
        self.topic = topic
        self.committed: dict[Any, int] = {}

    async def submit(self, value: Batch[T]) -> None:
        if value.dead_letters:
            await asyncio.gather(*value.dead_letters)  # retried until acknowledged
        assignment = self.consumer.assignment()
        offsets = {tp: off for tp, off in value.offsets.items() if tp in assignment}
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except CommitFailedError:
                if self.log is not None:
                    self.log.warning(
                        "pipeline.commit_failed_rebalance", offsets={str(k): v for k, v in offsets.items()}
                    )
                return
            self.committed.update(offsets)
            if self.metrics is not None:
                self.metrics.inc("argus_commits_total")
        if self.metrics is not None:
            self.metrics.observe("argus_batch_size", value.messages, topic=self.topic)

    async def poll(self) -> None:
        return None

    async def join(self) -> None:
        return None
