"""Each step of the consumer runtime, driven without a broker: a recording next step
takes what it hands on (as arroyo's tests drive a strategy with a mock next step), and
a consumer stand-in records commits, pauses and resumes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition

from services.common.dlq import DeadLetterPolicy, Message
from services.common.metrics import Metrics
from services.common.registry import get_codec
from services.common.runtime import BatchStep, CommitStep, ConcurrentStep, DecodeStep, RunTaskStep, SinkStep
from services.common.runtime.decode import InvalidMessage
from services.common.runtime.records import Batch, Chunk, Records
from services.common.runtime.sink import TransientError
from services.common.settings import KafkaSettings, PipelineSettings

TP = TopicPartition("t.argus.feedback", 1)


@dataclass
class Rec:
    offset: int
    value: bytes | None
    topic: str = TP.topic
    partition: int = TP.partition
    key: bytes | None = None
    timestamp: int = 1764000000000
    headers: tuple = ()


class Recorder:
    """A next step that records what it is given."""

    def __init__(self) -> None:
        self.submitted: list[Any] = []
        self.polls = 0
        self.joins = 0

    async def submit(self, value: Any) -> None:
        self.submitted.append(value)

    async def poll(self) -> None:
        self.polls += 1

    async def join(self) -> None:
        self.joins += 1


class Consumer:
    """What the steps use of an aiokafka consumer."""

    def __init__(self, assignment: set[TopicPartition]) -> None:
        self._assignment = set(assignment)
        self.commits: list[dict[TopicPartition, int]] = []
        self.paused: list[set] = []
        self.resumed: list[set] = []

    def assignment(self) -> set[TopicPartition]:
        return self._assignment

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


def policy(**kw: Any) -> DeadLetterPolicy:
    settings = PipelineSettings(retry_initial_backoff_s=0.001, retry_max_backoff_s=0.002, **kw)
    return DeadLetterPolicy(
        kafka=KafkaSettings(topic_prefix="t."), service="test", group="g", settings=settings, metrics=Metrics("test")
    )


def feedback(i: int, kind: str = "thumbs") -> bytes:
    return get_codec("feedback").encode(
        {
            "feedback_id": f"00000000-0000-0000-0000-{i:012d}",
            "request_id": f"00000000-0000-0000-0001-{i:012d}",
            "tenant": "acme",
            "kind": kind,
            "score": 1.0,
            "source": "user",
            "created_at": 1764000000000,
        }
    )


def transform(msg: Message) -> tuple[int, str] | None:
    if msg.value["kind"] == "label":
        return None  # skipped on purpose
    if msg.value["kind"] == "correction":
        raise InvalidMessage("corrections are not taken here", "InvalidMessage.Kind")
    return (msg.offset, msg.value["kind"])


async def test_decode_step_hands_on_items_and_dead_letters_the_rest_in_offset_order() -> None:
    sent: list[tuple] = []

    async def sender(topic: str, value: bytes, key: bytes | None, headers: list) -> None:
        sent.append((topic, dict(headers)[b"argus.original_offset".decode()]))

    nxt = Recorder()
    step = DecodeStep(get_codec("feedback").decode, transform, policy(), lambda: sender, nxt, track_offsets=True)
    await step.submit(
        Records(
            TP,
            [
                Rec(10, feedback(1)),
                Rec(11, b"not avro"),
                Rec(12, feedback(2, "label")),
                Rec(13, feedback(3, "correction")),
                Rec(14, feedback(4)),
            ],
        )
    )
    (chunk,) = nxt.submitted
    assert chunk.items == [(10, "thumbs"), (14, "thumbs")] and chunk.item_offsets == [10, 14]
    assert chunk.next_offset == 15 and chunk.messages == 5
    assert [o for o, _ in chunk.dead_letters] == [11, 13]
    await asyncio.gather(*(ack for _, ack in chunk.dead_letters))
    assert sent == [("t.argus.feedback.dlq", b"11"), ("t.argus.feedback.dlq", b"13")]
    await step.poll()
    await step.join()
    assert (nxt.polls, nxt.joins) == (1, 1)


async def test_decode_step_takes_the_fast_path_where_it_answers() -> None:
    nxt = Recorder()
    fast = lambda rec: ("fast", rec.offset) if rec.offset % 2 == 0 else None  # noqa: E731
    step = DecodeStep(get_codec("feedback").decode, transform, policy(), lambda: None, nxt, fast_path=fast)
    await step.submit(Records(TP, [Rec(0, b"anything"), Rec(1, feedback(1))]))
    assert nxt.submitted[0].items == [("fast", 0), (1, "thumbs")]


async def test_batch_step_hands_on_by_size_and_by_age() -> None:
    now = [100.0]
    nxt = Recorder()
    step = BatchStep(5, 2.0, nxt, clock=lambda: now[0])
    await step.submit(Chunk(TP, items=["a", "b"], next_offset=3, messages=3))
    assert nxt.submitted == [] and step.room == 2
    await step.submit(Chunk(TP, items=["c"], next_offset=5, messages=2))
    (first,) = nxt.submitted
    assert first.items == ["a", "b", "c"] and first.offsets == {TP: 5} and first.messages == 5
    await step.submit(Chunk(TP, items=["d"], next_offset=6, messages=1))
    await step.poll()
    assert len(nxt.submitted) == 1  # not old yet
    now[0] += 2.5
    await step.poll()
    assert [b.items for b in nxt.submitted] == [["a", "b", "c"], ["d"]] and nxt.polls == 2


async def test_batch_step_join_hands_on_what_it_holds_then_joins() -> None:
    nxt = Recorder()
    step = BatchStep(100, 60.0, nxt)
    await step.submit(Chunk(TP, items=["x"], next_offset=8, messages=1))
    await step.join()
    assert [b.offsets for b in nxt.submitted] == [{TP: 8}] and nxt.joins == 1
    step.discard()
    await step.join()
    assert len(nxt.submitted) == 1


async def test_sink_step_retries_a_transient_failure_with_partitions_paused_then_hands_on() -> None:
    calls: list[list] = []
    consumer = Consumer({TP})

    async def flaky(items: list) -> None:
        calls.append(list(items))
        if len(calls) < 3:
            raise TransientError("store down")

    nxt = Recorder()
    step = SinkStep(
        flaky,
        nxt,
        initial_backoff_s=0.001,
        max_backoff_s=0.002,
        pause=lambda: (consumer.paused.append({TP}), {TP})[1],
        resume=lambda tps: consumer.resumed.append(tps),
        metrics=Metrics("test"),
        name="fb",
    )
    batch: Batch = Batch(items=[1, 2], offsets={TP: 3}, messages=2)
    await step.submit(batch)
    await step.join()
    assert calls == [[1, 2]] * 3 and nxt.submitted == [batch] and step.healthy
    assert consumer.paused == [{TP}] and consumer.resumed == [{TP}]
    assert step.metrics.value("argus_sink_retries_total", sink="fb") == 2


async def test_sink_step_writes_one_batch_at_a_time_in_order() -> None:
    order: list[str] = []
    gate = asyncio.Event()

    async def slow(items: list) -> None:
        order.append(f"start {items[0]}")
        if items[0] == "a":
            await gate.wait()
        order.append(f"end {items[0]}")

    nxt = Recorder()
    step = SinkStep(slow, nxt, initial_backoff_s=0.01, max_backoff_s=0.01, pause=set, resume=lambda _: None)
    await step.submit(Batch(items=["a"]))
    second = asyncio.create_task(step.submit(Batch(items=["b"])))
    await asyncio.sleep(0.05)
    assert order == ["start a"] and not second.done()  # the next write waits for the previous
    gate.set()
    await second
    await step.join()
    assert order == ["start a", "end a", "start b", "end b"]


async def test_a_sink_failure_that_is_not_transient_stops_the_consumer() -> None:
    async def broken(items: list) -> None:
        raise ValueError("a bug")

    step = SinkStep(broken, Recorder(), initial_backoff_s=0.01, max_backoff_s=0.01, pause=set, resume=lambda _: None)
    await step.submit(Batch(items=[1]))
    with pytest.raises(ValueError):
        await step.join()


async def test_commit_step_waits_for_dead_letters_and_commits_only_what_it_holds() -> None:
    other = TopicPartition(TP.topic, 2)
    consumer = Consumer({TP})
    step = CommitStep(consumer, Metrics("test"))
    ack: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(step.submit(Batch(offsets={TP: 9, other: 4}, dead_letters=[ack], messages=3)))
    await asyncio.sleep(0.01)
    assert consumer.commits == [] and not task.done()  # not before the dead letter is acknowledged
    ack.set_result(None)
    await task
    assert consumer.commits == [{TP: 9}] and step.committed == {TP: 9}


async def test_concurrent_step_commits_the_longest_finished_prefix() -> None:
    consumer = Consumer({TP})
    release: dict[int, asyncio.Event] = {o: asyncio.Event() for o in (1, 2, 4)}
    handled: list[int] = []

    async def handler(tp: TopicPartition, offset: int, item: str) -> None:
        await release[offset].wait()
        handled.append(offset)

    step = ConcurrentStep(handler, max_in_flight=3, consumer=consumer, commit_interval_s=0.0)
    dead: asyncio.Future = asyncio.get_running_loop().create_future()
    await step.submit(
        Chunk(TP, items=["a", "b", "c"], item_offsets=[1, 2, 4], dead_letters=[(3, dead)], next_offset=5, messages=4)
    )
    assert step.room == 0  # three in flight, one dead letter awaiting its acknowledgement
    release[2].set()
    await asyncio.sleep(0.01)
    await step.poll()
    assert all(c[TP] <= 1 for c in consumer.commits)  # offset 1 is not finished: nothing past it is committed
    release[1].set()
    await asyncio.sleep(0.01)
    await step.poll()
    assert consumer.commits[-1] == {TP: 3}
    dead.set_result(None)
    release[4].set()
    await step.join()
    assert consumer.commits[-1] == {TP: 5} and sorted(handled) == [1, 2, 4]


async def test_concurrent_step_stops_on_a_failed_item_without_committing_past_it() -> None:
    consumer = Consumer({TP})

    async def handler(tp: TopicPartition, offset: int, item: str) -> None:
        if offset == 1:
            raise RuntimeError("the broker refused the response")

    step = ConcurrentStep(handler, max_in_flight=4, consumer=consumer, commit_interval_s=0.0)
    await step.submit(Chunk(TP, items=["a", "b"], item_offsets=[1, 2], next_offset=3, messages=2))
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError):
        await step.poll()
    await step.join()
    assert consumer.commits == []


async def test_run_task_step_handles_in_order_then_commits_the_chunk() -> None:
    consumer = Consumer({TP})
    seen: list[str] = []

    async def handler(item: str) -> None:
        seen.append(item)

    step = RunTaskStep(handler, consumer)
    ack: asyncio.Future = asyncio.get_running_loop().create_future()
    ack.set_result(None)
    await step.submit(Chunk(TP, items=["x", "y"], dead_letters=[(7, ack)], next_offset=8, messages=3))
    assert seen == ["x", "y"] and consumer.commits == [{TP: 8}]


async def test_a_join_from_a_rebalance_waits_for_the_hand_over_in_progress() -> None:
    """The rebalance listener runs in another task than the poll loop: its join returns
    only when the batch being handed on and the one gathered since are both through."""
    gate = asyncio.Event()

    class SlowNext(Recorder):
        async def submit(self, value: Any) -> None:
            if not self.submitted:
                await gate.wait()  # the first write is slow
            self.submitted.append(value)

    nxt = SlowNext()
    step = BatchStep(2, 60.0, nxt)
    handing = asyncio.create_task(step.submit(Chunk(TP, items=["a", "b"], next_offset=2, messages=2)))
    await asyncio.sleep(0.01)
    await step.submit(Chunk(TP, items=["c"], next_offset=3, messages=1))  # joins the next batch
    joining = asyncio.create_task(step.join())
    await asyncio.sleep(0.02)
    assert not joining.done()  # not while the first batch is still being handed on
    gate.set()
    await asyncio.gather(handing, joining)
    assert [b.items for b in nxt.submitted] == [["a", "b"], ["c"]] and nxt.joins == 1
