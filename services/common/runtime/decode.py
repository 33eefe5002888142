"""DecodeStep: records -> decoded, validated, transformed items; invalid -> dead letters."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Generic, Iterator, TypeVar

from services.common.codec import SerializationError
from services.common.dlq import DeadLetterPolicy, Message, Sender
from services.common.runtime.records import Chunk, Records, Step

T = TypeVar("T")


class InvalidMessage(Exception):
    """This message can never be processed: dead-letter it, do not retry."""

    def __init__(self, reason: str, error_type: str = "InvalidMessage") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type


class DecodeStep(Generic[T]):
    """Decodes each record with the topic's codec and runs the pure ``transform``
    (which raises :class:`InvalidMessage` for input it cannot accept and returns
    ``None`` to skip a message on purpose). Invalid records go to the dead-letter
    policy; the next step gets one :class:`Chunk` per partition fetch.

    ``fast_path(record)`` may turn a raw record straight into an item (it must accept
    only what decode + transform would accept and give the same item); ``None`` sends
    the record through decode + transform. ``track_offsets`` records each item's offset
    (for steps that finish items out of order).
    """

    def __init__(
        self,
        decode: Callable[[bytes | None], Any],
        transform: Callable[[Message], T | None],
        dlq: DeadLetterPolicy,
        send_dead_letter: Callable[[], Sender],
        next_step: Step[Chunk[T]],
        fast_path: Callable[[Any], T | None] | None = None,
        track_offsets: bool = False,
    ) -> None:
        self.decode = decode
        self.transform = transform
        self.dlq = dlq
        self.send_dead_letter = send_dead_letter  # called when needed: the producer starts with the consumer
        self.next_step = next_step
        self.fast_path = fast_path
        self.track_offsets = track_offsets

    # Decoding and transforming a fetched batch is synchronous work; one message can be
    # slow (a megabyte of text to screen for PII, bounded by the screen's own budget), so
    # the step hands the event loop back every YIELD_EVERY_S seconds within a batch:
    # every pipeline and the health server share that loop.
    YIELD_EVERY_S = 0.05

    async def submit(self, value: Records) -> None:
        out: list[Chunk[T]] = []
        for _ in self._run(value, out, self.YIELD_EVERY_S):
            await asyncio.sleep(0)
        await self.next_step.submit(out[0])

    def process(self, value: Records) -> Chunk[T]:
        out: list[Chunk[T]] = []
        for _ in self._run(value, out, None):
            pass
        return out[0]

    def _run(self, value: Records, out: list[Chunk[T]], yield_every: float | None) -> Iterator[None]:
        """Process ``value`` into ``out[0]``, yielding whenever ``yield_every`` seconds
        have passed since the last yield (never when it is None)."""
        clock = time.monotonic
        due = clock() + yield_every if yield_every is not None else None
        tp, msgs = value.tp, value.records
        chunk: Chunk[T] = Chunk(tp, next_offset=msgs[-1].offset + 1, messages=len(msgs))
        append = chunk.items.append
        offsets = chunk.item_offsets.append if self.track_offsets else None
        fast, decode, transform = self.fast_path, self.decode, self.transform
        valid = 0  # valid outcomes not yet recorded in the dead-letter ratio (kept in offset order)
        for rec in msgs:
            if due is not None and clock() > due:
                yield
                due = clock() + yield_every  # type: ignore[operator]
            if fast is not None:
                item = fast(rec)
                if item is not None:
                    append(item)
                    if offsets is not None:
                        offsets(rec.offset)
                    valid += 1
                    continue
            msg = Message(
                rec.topic, rec.partition, rec.offset, rec.key, rec.value, rec.timestamp, tuple(rec.headers or ())
            )
            try:
                try:
                    msg.value = decode(msg.raw)
                except SerializationError as exc:
                    raise InvalidMessage(str(exc), "InvalidMessage.SerializationError") from exc
                item = transform(msg)
            except InvalidMessage as exc:
                self.dlq.record_valid(tp.topic, tp.partition, valid)
                valid = 0
                ack = self.dlq.send(self.send_dead_letter(), msg, exc.reason, exc.error_type)
                chunk.dead_letters.append((rec.offset, ack))
                continue
            valid += 1
            if item is not None:
                append(item)
                if offsets is not None:
                    offsets(rec.offset)
        self.dlq.record_valid(tp.topic, tp.partition, valid)
        out.append(chunk)

    async def poll(self) -> None:
        await self.next_step.poll()

    async def join(self) -> None:
        await self.next_step.join()
