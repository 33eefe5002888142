"""What flows between the runtime's steps."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from aiokafka import TopicPartition

T = TypeVar("T")
In = TypeVar("In", contravariant=True)


class Step(Protocol[In]):
    """One step of a consumer: takes work, does time-based work, finishes its work."""

    async def submit(self, value: In) -> None: ...

    async def poll(self) -> None: ...

    async def join(self) -> None: ...


@dataclass
class Records:
    """One partition's records from one fetch, in offset order (aiokafka ConsumerRecords)."""

    tp: TopicPartition
    records: list[Any]


@dataclass
class Chunk(Generic[T]):
    """What one partition's records became: the items for the next step (with their
    offsets), the broker acknowledgements of the dead letters (with theirs), and the
    offset to resume from once all of them are done."""

    tp: TopicPartition
    items: list[T] = field(default_factory=list)
    item_offsets: list[int] = field(default_factory=list)
    dead_letters: list[tuple[int, asyncio.Future]] = field(default_factory=list)
    next_offset: int = 0
    messages: int = 0


@dataclass
class Batch(Generic[T]):
    """Chunks gathered for one write: items, the offsets they complete per partition,
    and the dead letters to be acknowledged before those offsets are committed."""

    items: list[T] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    messages: int = 0
    dead_letters: list[asyncio.Future] = field(default_factory=list)

    def add(self, chunk: Chunk[T]) -> None:
        self.items.extend(chunk.items)
        self.dead_letters.extend(f for _, f in chunk.dead_letters)
        self.offsets[chunk.tp] = chunk.next_offset
        self.messages += chunk.messages
