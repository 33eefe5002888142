"""The Kafka bridge: requests topic -> Ray Serve (DeploymentHandle) -> responses topic.

- A consumer group on the requests topic; each valid request is dispatched to the
  Router through a ``DeploymentHandle`` with at most ``max_in_flight`` outstanding
  (backpressure: the bridge stops fetching while the limit is reached, so memory is
  bounded however large the backlog).
- Each request's deadline is enforced: a request already past it, or not answered in
  time, gets a ``deadline_exceeded`` response; every other failure becomes a response
  with status ``error``. One response per request, keyed by request_id.
- Shadow answers go to the shadow-responses topic, which producers never read.
- Invalid requests go to the dead-letter topic with the reason.
- Offsets are committed only after the response (and any dead letter) was acknowledged
  by the broker, up to the longest finished prefix of each partition; a crash re-answers
  at most the in-flight requests (same request_id).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition

from services.common.codec import SerializationError, to_json
from services.common.dlq import DeadLetterPolicy, Message, producer_sender
from services.common.health import Readiness
from services.common.kafka import assigned_lag, make_consumer, make_producer
from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.offsets import OffsetTracker
from services.common.registry import SchemaRegistry, default_registry
from services.inference.responses import response_record
from services.inference.settings import InferenceSettings


class InferenceBridge:
    def __init__(
        self,
        settings: InferenceSettings,
        router: Any,
        metrics: Metrics | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.router = router  # DeploymentHandle of the Router (anything with .infer.remote)
        reg = registry or default_registry()
        k = settings.kafka
        self.requests_topic = k.topic("inference-requests")
        self.responses_topic = k.topic("inference-responses")
        self.shadow_topic = k.topic("inference-shadow-responses")
        self.req_codec = reg.codec("inference-requests")
        self.resp_codec = reg.codec("inference-responses")
        self.metrics = metrics or Metrics("inference-bridge")
        self.dlq = DeadLetterPolicy(
            kafka=k,
            service="inference-bridge",
            group=settings.bridge.group_id,
            settings=settings.pipeline,
            metrics=self.metrics,
            registry=reg,
        )
        self.log = get_logger("argus.inference.bridge", topic=self.requests_topic)
        self.tracker = OffsetTracker()
        self.committed: dict[TopicPartition, int] = {}  # what this member committed (readiness lag)
        self.slots = asyncio.Semaphore(settings.bridge.max_in_flight)
        self.tasks: set[asyncio.Task] = set()
        self.consumer = None
        self.producer = None
        self.last_progress = time.time()
        self.answered = 0
        self._failure: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        k = self.settings.kafka
        self.producer = make_producer(k)
        await self.producer.start()
        self.consumer = make_consumer(
            k,
            self.settings.bridge.group_id,
            max_poll_records=self.settings.bridge.max_in_flight,
            # a request may wait for the model longer than the default poll interval
            max_poll_interval_ms=max(300_000, int(self.settings.bridge.default_timeout_s * 2000)),
        )
        self.consumer.subscribe([self.requests_topic], listener=_DrainOnRevoke(self))
        await self.consumer.start()
        self.log.info(
            "bridge.started", group=self.settings.bridge.group_id, max_in_flight=self.settings.bridge.max_in_flight
        )

    async def stop(self) -> None:
        try:
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            if self.consumer is not None and self._failure is None:
                await self._commit()
        finally:
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            last_commit = time.monotonic()
            while not stop.is_set():
                if self._failure is not None:
                    raise self._failure
                await self.step()
                if time.monotonic() - last_commit >= self.settings.bridge.commit_interval_s:
                    await self._commit()
                    last_commit = time.monotonic()
        finally:
            await self.stop()

    async def step(self) -> None:
        assert self.consumer is not None
        free = self.settings.bridge.max_in_flight - self.tracker.in_flight()
        if free <= 0:  # backpressure: fetch nothing until a slot frees up
            await asyncio.sleep(0.01)
            self.last_progress = time.time()
            return
        batch = await self.consumer.getmany(timeout_ms=200, max_records=free)
        self.last_progress = time.time()
        self.metrics.set("argus_last_poll_timestamp_seconds", self.last_progress)
        for tp, records in batch.items():
            for rec in records:
                self.tracker.started(tp, rec.offset)
                self.metrics.inc("argus_messages_consumed_total", topic=tp.topic)
                msg = Message(
                    rec.topic, rec.partition, rec.offset, rec.key, rec.value, rec.timestamp, tuple(rec.headers or ())
                )
                try:
                    request = self.req_codec.decode(rec.value)
                    _validate(request)
                except (SerializationError, InvalidRequest) as exc:
                    await self._dead_letter(tp, msg, str(exc), "InvalidMessage." + type(exc).__name__)
                    continue
                self.dlq.record_valid(tp.topic, tp.partition)
                await self.slots.acquire()
                task = asyncio.create_task(self._answer(tp, msg, request))
                self.tasks.add(task)
                task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.slots.release()
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()  # e.g. the broker refused the response: stop, don't commit

    # -- one request -----------------------------------------------------------------
    async def _answer(self, tp: TopicPartition, msg: Message, request: dict[str, Any]) -> None:
        log = self.log.bind(partition=msg.partition, offset=msg.offset, request_id=str(request["request_id"]))
        plain = to_json(request)
        started = time.monotonic()
        deadline = request.get("deadline")
        remaining = (
            (deadline - dt.datetime.now(dt.timezone.utc)).total_seconds()
            if deadline
            else self.settings.bridge.default_timeout_s
        )
        self.metrics.set("argus_in_flight", self.tracker.in_flight())
        shadows: list[dict[str, Any]] = []
        if remaining <= 0:
            resp = response_record(
                plain,
                model_version="none",
                status="deadline_exceeded",
                error_type="DeadlineExceeded",
                error_message="deadline passed before the request was dispatched",
                latency_ms=0.0,
            )
        else:
            try:
                out = await asyncio.wait_for(self.router.infer.remote(plain), timeout=remaining)
                resp = _from_generation(plain, out["primary"])
                shadows = [_from_generation(plain, s, shadow=True) for s in out["shadows"]]
            except asyncio.TimeoutError:
                resp = response_record(
                    plain,
                    model_version="unknown",
                    status="deadline_exceeded",
                    error_type="DeadlineExceeded",
                    error_message=f"no answer within {remaining:.1f}s",
                    latency_ms=(time.monotonic() - started) * 1000,
                )
            except Exception as exc:  # Serve/Ray failures become error responses, never silence
                resp = response_record(
                    plain,
                    model_version="unknown",
                    status="error",
                    error_type=type(exc).__name__,
                    error_message=str(exc),
                    latency_ms=(time.monotonic() - started) * 1000,
                )
        assert self.producer is not None
        key = str(request["request_id"]).encode()
        futures = [await self.producer.send(self.responses_topic, self.resp_codec.encode(resp), key=key)]
        for s in shadows:
            futures.append(await self.producer.send(self.shadow_topic, self.resp_codec.encode(s), key=key))
        await asyncio.gather(*futures)  # acknowledged by the broker before the offset may be committed
        self.metrics.inc("argus_messages_produced_total", topic=self.responses_topic)
        self.answered += 1
        self.tracker.finished(tp, msg.offset)
        log.debug("bridge.answered", status=resp["status"], model_version=resp["model_version"])

    async def _dead_letter(self, tp: TopicPartition, msg: Message, reason: str, error_type: str) -> None:
        assert self.producer is not None
        await self.dlq.send(producer_sender(self.producer), msg, reason, error_type)
        self.tracker.finished(tp, msg.offset)

    async def _commit(self, only: list[TopicPartition] | None = None) -> None:
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        offsets = {
            tp: o for tp, o in self.tracker.committable().items() if tp in assignment and (only is None or tp in only)
        }
        if offsets:
            await self.consumer.commit(offsets)
            self.committed.update(offsets)
            self.metrics.inc("argus_commits_total")

    async def readiness(self) -> Readiness:
        if self.consumer is None:
            return Readiness(False, "inference-bridge", False, True, detail="not started")
        parts = sorted(self.consumer.assignment(), key=lambda t: t.partition)
        lag = await assigned_lag(self.consumer, self.committed, self.metrics)
        committed = {f"{tp.topic}[{tp.partition}]": o for tp, o in self.tracker.committable().items()}
        return Readiness(
            self._failure is None,
            "inference-bridge",
            True,
            True,
            [f"{tp.topic}[{tp.partition}]" for tp in parts],
            lag,
            committed,
            detail=repr(self._failure) if self._failure else "",
        )


class InvalidRequest(ValueError):
    """A well-formed record that cannot be answered (no messages, bad roles...)."""


def _validate(request: dict[str, Any]) -> None:
    if not request["messages"]:
        raise InvalidRequest("messages is empty")
    roles = {m["role"] for m in request["messages"]}
    if not roles <= {"system", "user", "assistant", "tool"}:
        raise InvalidRequest(f"unknown message roles {sorted(roles - {'system', 'user', 'assistant', 'tool'})}")
    if request.get("max_tokens") is not None and request["max_tokens"] <= 0:
        raise InvalidRequest(f"max_tokens must be positive, got {request['max_tokens']}")


def _from_generation(request: dict[str, Any], out: dict[str, Any], shadow: bool = False) -> dict[str, Any]:
    if "error_type" in out:
        return response_record(
            request,
            model_version=out.get("version", "unknown"),
            status="error",
            error_type=out["error_type"],
            error_message=out.get("error_message"),
            latency_ms=out.get("latency_ms"),
            shadow=shadow,
        )
    return response_record(request, model_version=out["version"], generation=out, shadow=shadow)


class _DrainOnRevoke(ConsumerRebalanceListener):
    """Before partitions move to another member, finish their in-flight requests and
    commit, so the new owner does not answer them again."""

    def __init__(self, bridge: InferenceBridge) -> None:
        self.bridge = bridge

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.bridge.tasks:
            await asyncio.gather(*list(self.bridge.tasks), return_exceptions=True)
        if self.bridge._failure is None and revoked:
            await self.bridge._commit(list(revoked))
        self.bridge.tracker.forget(list(revoked))
        for tp in revoked:
            self.bridge.committed.pop(tp, None)  # its next owner commits it

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.bridge.log.info("bridge.assigned", partitions=sorted(str(tp) for tp in assigned))
