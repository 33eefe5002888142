"""StreamProcessor: one consumer group member driving a chain of steps.

It polls the broker (as much as the chain has room for), hands each partition's records
in offset order to the first step, polls the chain for time-based work, and on a
rebalance lets the chain finish what it holds for the partitions that leave
(``on_revoke``) and positions every assigned partition where it must resume
(``resume_offsets``: a sink that knows what it stored is resumed after it, so no row
is written twice after a crash between a write and its commit).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from aiokafka import ConsumerRebalanceListener, TopicPartition

from services.common.runtime.records import Records, Step


class StreamProcessor:
    def __init__(
        self,
        consumer: Any,
        topics: list[str],
        first_step: Step[Records],
        *,
        room: Callable[[], int],
        on_revoke: Callable[[list[TopicPartition]], Awaitable[None]],
        resume_offsets: Callable[[list[TopicPartition]], Awaitable[dict[TopicPartition, int]]] | None = None,
        auto_offset_reset: str = "earliest",
        metrics: Any = None,
        log: Any = None,
        pattern: str | None = None,
    ) -> None:
        self.consumer = consumer
        self.topics = topics
        self.pattern = pattern  # subscribe to every topic matching this regex instead of ``topics``
        self.first_step = first_step
        self.room = room
        self.on_revoke = on_revoke
        self.resume_offsets = resume_offsets
        self.auto_offset_reset = auto_offset_reset
        self.metrics = metrics
        self.log = log
        self.last_progress = time.time()
        self._position: dict[TopicPartition, int] = {}  # next offset expected per assigned partition
        self._ready: set[TopicPartition] = set()  # assigned partitions whose resume point is decided

    def subscribe(self) -> None:
        if self.pattern is not None:
            self.consumer.subscribe(pattern=self.pattern, listener=_Rebalance(self))
        else:
            self.consumer.subscribe(self.topics, listener=_Rebalance(self))

    async def step(self, timeout_ms: int = 200) -> None:
        room = self.room()
        if room <= 0:  # backpressure: fetch nothing until the chain has room
            await asyncio.sleep(0.01)
            self.last_progress = time.time()
            await self.first_step.poll()
            return
        fetched = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=room)
        self.last_progress = time.time()
        if self.metrics is not None:
            self.metrics.set("argus_last_poll_timestamp_seconds", self.last_progress)
        await self.deliver(fetched)
        await self.first_step.poll()

    async def keep_polling(self) -> None:
        """While a write is being retried with the partitions paused: poll so this member
        stays in its group (paused partitions return nothing; a newly assigned one's
        records join the next batch)."""
        await self.deliver(await self.consumer.getmany(timeout_ms=0))
        self.last_progress = time.time()

    async def deliver(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        for tp, msgs in fetched.items():
            msgs = self._in_order(tp, msgs)
            if msgs:
                if self.metrics is not None:
                    self.metrics.inc("argus_messages_consumed_total", len(msgs), topic=tp.topic)
                await self.first_step.submit(Records(tp, msgs))

    def _in_order(self, tp: TopicPartition, msgs: list[Any]) -> list[Any]:
        """The records to process: none fetched before the partition's resume point was
        decided (they come again from there), and offsets strictly increasing within an
        assignment (a record delivered twice would be processed twice)."""
        if not msgs:
            return msgs
        if self.resume_offsets is not None and tp not in self._ready:
            return []
        expected = self._position.get(tp)
        if (expected is not None and msgs[0].offset < expected) or msgs[-1].offset - msgs[0].offset + 1 != len(msgs):
            # not one contiguous run after what was delivered: gaps (compaction, transaction
            # markers) are fine; a redelivered record is dropped (defensive: the client
            # should never do it, and a warning says if it did)
            kept, nxt = [], -1 if expected is None else expected
            for r in msgs:
                if r.offset >= nxt:
                    kept.append(r)
                    nxt = r.offset + 1
            if len(kept) != len(msgs) and self.log is not None:
                self.log.warning(
                    "pipeline.redelivered_skipped",
                    partition=tp.partition,
                    first=msgs[0].offset,
                    expected=expected,
                    skipped=len(msgs) - len(kept),
                )
            msgs = kept
        if msgs:
            self._position[tp] = msgs[-1].offset + 1
        return msgs

    async def _revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self._position.pop(tp, None)
            self._ready.discard(tp)
        await self.on_revoke(revoked)

    async def _assigned(self, assigned: list[TopicPartition]) -> None:
        if self.log is not None:
            self.log.info("pipeline.assigned", partitions=sorted(str(tp) for tp in assigned))
        for tp in assigned:
            self._position.pop(tp, None)
            self._ready.discard(tp)
        if self.resume_offsets is None or not assigned:
            return
        # Everything the decision needs is fetched first; the seeks and the ready mark then
        # happen together, with no await between them: records the poll loop receives
        # after the mark come from the new position (older ones are dropped by the
        # position check), and records it received before were dropped as not ready and
        # are fetched again from the seek.
        stored = await self.resume_offsets(list(assigned))
        committed = {tp: await self.consumer.committed(tp) for tp in assigned}
        resume: dict[TopicPartition, int] = {}
        unknown = []
        for tp in assigned:
            offset = stored.get(tp)
            if committed[tp] is not None and (offset is None or committed[tp] >= offset):
                offset = committed[tp]
            elif offset is not None and self.log is not None:
                self.log.info(
                    "pipeline.resume_from_sink", partition=tp.partition, committed=committed[tp], offset=offset
                )
            if offset is None:
                unknown.append(tp)
            else:
                resume[tp] = offset
        if unknown:  # nothing committed, nothing stored: where the group's reset policy starts
            latest = self.auto_offset_reset == "latest"
            resume.update(
                await self.consumer.end_offsets(unknown) if latest else await self.consumer.beginning_offsets(unknown)
            )
        for tp, offset in resume.items():
            self.consumer.seek(tp, offset)
            self._position[tp] = offset
        self._ready.update(assigned)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, processor: StreamProcessor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.processor._revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.processor._assigned(list(assigned))
