"""Commit points for consumers that process messages concurrently.

Messages of one partition may finish out of order; the committable offset is the one
after the longest finished prefix, so a crash never skips an unfinished message."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from aiokafka import TopicPartition


@dataclass
class _PartitionState:
    next_commit: int | None = None  # offset after the finished prefix
    pending: set[int] = field(default_factory=set)
    done: list[int] = field(default_factory=list)  # heap of finished offsets beyond the prefix


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _PartitionState] = {}

    def started(self, tp: TopicPartition, offset: int) -> None:
        st = self._parts.setdefault(tp, _PartitionState())
        if st.next_commit is None:
            st.next_commit = offset
        st.pending.add(offset)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        st = self._parts[tp]
        st.pending.discard(offset)
        heapq.heappush(st.done, offset)
        while st.done and st.done[0] == st.next_commit:
            heapq.heappop(st.done)
            st.next_commit += 1
        # offsets may have gaps (compaction, transaction markers): a finished offset that
        # is below every pending one also advances the prefix
        while st.done and (not st.pending or st.done[0] < min(st.pending)):
            st.next_commit = heapq.heappop(st.done) + 1

    def committable(self) -> dict[TopicPartition, int]:
        return {tp: st.next_commit for tp, st in self._parts.items() if st.next_commit is not None}

    def in_flight(self, tp: TopicPartition | None = None) -> int:
        if tp is not None:
            st = self._parts.get(tp)
            return len(st.pending) if st else 0
        return sum(len(st.pending) for st in self._parts.values())

    def forget(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)
