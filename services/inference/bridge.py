"""The Kafka bridge: requests topic -> Ray Serve (DeploymentHandle) -> responses topic,
built from the runtime's steps (``DecodeStep`` -> ``ConcurrentStep``).

- A consumer group on the requests topic; each valid request is dispatched to the
  Router through a ``DeploymentHandle`` with at most ``max_in_flight`` outstanding
  (backpressure: the bridge stops fetching while the limit is reached, so memory is
  bounded however large the backlog).
- Each request's deadline is enforced: a request already past it, or not answered in
  time, gets a ``deadline_exceeded`` response; every other failure becomes a response
  with status ``error``. One response per request, keyed by request_id.
- Shadow answers go to the shadow-responses topic, which producers never read.
- A request the tenant gateway forwarded (header ``argus.reply_tenant`` equal to its
  ``tenant``) is also answered on that tenant's reply topic
  (:mod:`services.common.tenants`), acknowledged before the offset is committed.
- A request the HTTP route already answered (header ``argus.answered_by: http``, see
  :mod:`services.inference.journal`) is committed past without generating it again.
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

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError, UnknownTopicOrPartitionError

from services.common.codec import to_json
from services.common.dlq import DeadLetterPolicy, Message, producer_sender
from services.common.health import Readiness
from services.common.kafka import assigned_lag, make_consumer, make_producer
from services.common.logging import get_logger
from services.common.lru import RecentMap
from services.common.metrics import Metrics
from services.common.offsets import OffsetTracker
from services.common.registry import SchemaRegistry, default_registry
from services.common.runtime import ConcurrentStep, DecodeStep, StreamProcessor
from services.common.runtime.decode import InvalidMessage
from services.common.runtime.service import ConsumerService
from services.common.tenants import NAME as TENANT_NAME
from services.common.tenants import REPLY_HEADER, response_topic
from services.inference.journal import ANSWERED_BY_HEADER, ANSWERED_BY_HTTP
from services.inference.responses import answer_record, response_record
from services.inference.settings import InferenceSettings


class InferenceBridge(ConsumerService):
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
        self.consumer: Any = None
        self.producer: Any = None
        self.processor: StreamProcessor | None = None
        self.answering: ConcurrentStep[tuple[dict[str, Any], str | None, bool]] | None = None
        self.answered = 0
        self.answered_by_http = 0  # requests the HTTP route answered and published itself
        # request id -> when it was first taken (a producer's retry within the window is not generated twice)
        self.seen = RecentMap(settings.bridge.dedupe_max_ids)
        self.duplicates = 0

    # -- what readiness, metrics and tests read --------------------------------------
    @property
    def tracker(self) -> OffsetTracker:
        return self.answering.tracker if self.answering is not None else OffsetTracker()

    @property
    def committed(self) -> dict[TopicPartition, int]:
        return self.answering.committed if self.answering is not None else {}

    @property
    def last_progress(self) -> float:
        return self.processor.last_progress if self.processor is not None else time.time()

    @property
    def _failure(self) -> BaseException | None:
        return self.answering.failure if self.answering is not None else None

    # -- lifecycle -----------------------------------------------------------------
    def _build(self) -> StreamProcessor:
        """decode + validate (invalid -> dead letters) -> answer concurrently, commit the
        longest answered prefix of each partition."""
        b = self.settings.bridge
        send_dead_letter = producer_sender(self.producer)
        self.answering = ConcurrentStep(self._answer, b.max_in_flight, self.consumer, b.commit_interval_s, self.metrics)
        decode = DecodeStep(
            self.req_codec.decode, _request, self.dlq, lambda: send_dead_letter, self.answering, track_offsets=True
        )
        answering = self.answering
        return StreamProcessor(
            self.consumer,
            [self.requests_topic],
            decode,
            room=lambda: answering.room,
            on_revoke=answering.revoke,
            metrics=self.metrics,
            log=self.log,
        )

    async def start(self) -> None:
        k = self.settings.kafka
        # answers go out as soon as they are ready (linger 0): a 5 ms linger was 5 ms of every
        # request's latency; under load, what queues while a send is in flight still batches
        self.producer = make_producer(k, linger_ms=0)
        await self.producer.start()
        self.consumer = make_consumer(
            k,
            self.settings.bridge.group_id,
            max_poll_records=self.settings.bridge.max_in_flight,
            # a request may wait for the model longer than the default poll interval
            max_poll_interval_ms=max(300_000, int(self.settings.bridge.default_timeout_s * 2000)),
        )
        self.router = current_loop_handle(self.router, self.log)
        self.processor = self._build()
        self.processor.subscribe()
        await self.consumer.start()
        self.log.info(
            "bridge.started", group=self.settings.bridge.group_id, max_in_flight=self.settings.bridge.max_in_flight
        )

    def last_step(self) -> ConcurrentStep | None:
        return self.answering

    # -- one request -----------------------------------------------------------------
    async def _answer(self, tp: TopicPartition, offset: int, item: tuple[dict[str, Any], str | None, bool]) -> None:
        """Answer one request: its response (and shadow answers, and the tenant's copy)
        acknowledged by the broker before it counts as finished (and its offset may be
        committed)."""
        request, reply_tenant, answered_by_http = item
        log = self.log.bind(partition=tp.partition, offset=offset, request_id=str(request["request_id"]))
        if answered_by_http:  # its answer is on the responses topic already, from the HTTP route
            self.metrics.inc("argus_http_requests_seen_total")
            self.answered_by_http += 1
            return
        if self._duplicate(str(request["request_id"])):
            self.metrics.inc("argus_duplicate_requests_total")
            self.duplicates += 1
            log.info("bridge.duplicate_dropped", reason="request id answered or in flight within the dedupe window")
            return
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
                resp = answer_record(plain, out["primary"])
                shadows = [answer_record(plain, s, shadow=True) for s in out["shadows"]]
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
        if resp["status"] != "ok":  # a retry of a request that failed deserves another try, not a drop
            self.seen.pop(str(request["request_id"]), None)
        assert self.producer is not None
        key = str(request["request_id"]).encode()
        futures = [await self.producer.send(self.responses_topic, self.resp_codec.encode(resp), key=key)]
        for s in shadows:
            futures.append(await self.producer.send(self.shadow_topic, self.resp_codec.encode(s), key=key))
        await asyncio.gather(*futures)  # acknowledged by the broker before the offset may be committed
        if reply_tenant is not None:
            await self._reply(reply_tenant, key, self.resp_codec.encode(resp), log)
        self.metrics.inc("argus_messages_produced_total", topic=self.responses_topic)
        self.answered += 1
        log.debug("bridge.answered", status=resp["status"], model_version=resp["model_version"])

    def _duplicate(self, request_id: str) -> bool:
        """Whether this request id was taken within the dedupe window (and remember it)."""
        window = self.settings.bridge.dedupe_window_s
        if window <= 0:
            return False
        now = time.monotonic()
        first = self.seen.get(request_id)
        if first is not None and now - first <= window:
            return True
        self.seen.put(request_id, now)
        return False

    async def _reply(self, tenant: str, key: bytes, value: bytes, log: Any) -> None:
        """The answer on the tenant's reply topic. A tenant whose topic is gone (removed
        while its request was in flight) loses only that copy, with an error logged and
        counted: it must not stop the bridge for every other tenant."""
        assert self.producer is not None
        topic = response_topic(tenant, self.settings.kafka.topic_prefix)
        try:
            fut = await asyncio.wait_for(
                self.producer.send(topic, value, key=key), self.settings.gateway.reply_timeout_s
            )
            await fut
        except (
            asyncio.TimeoutError,
            KafkaTimeoutError,
            UnknownTopicOrPartitionError,
            TopicAuthorizationFailedError,
        ) as exc:
            self.metrics.inc("argus_tenant_replies_failed_total", error_type=type(exc).__name__)
            log.error("bridge.tenant_reply_failed", tenant=tenant, reply_topic=topic, error=type(exc).__name__)
            return
        self.metrics.inc("argus_messages_produced_total", topic=topic)

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


def current_loop_handle(router: Any, log: Any) -> Any:
    """The Router's handle with its request router on the running event loop (the bridge's).

    A handle's router runs on a thread of its own by default, so each call crosses threads
    twice; on this loop it does not (2 ms of a 4.6 ms no-op call here, docs/inference.md).
    A new handle, because the one given may already be bound to another thread or loop
    (``deploy`` checks the Router from a worker thread). Anything else is used as given."""
    try:
        from ray.serve.handle import DeploymentHandle
    except ImportError:  # pragma: no cover - ray is a dependency of the service
        return router
    if not isinstance(router, DeploymentHandle):
        return router
    try:
        handle = DeploymentHandle(router.deployment_name, router.app_name)
        handle._init(_run_router_in_separate_loop=False)  # an init option, Ray 2.60
    except Exception as exc:  # noqa: BLE001 - a Ray without the option: the thread router still works
        log.warning("bridge.handle_on_thread", error=type(exc).__name__)
        return router
    return handle


def _request(msg: Message) -> tuple[dict[str, Any], str | None, bool]:
    """The bridge's transform: a decoded request it can answer (the tenant whose reply
    topic gets a copy of the answer, and whether the HTTP route answered it already),
    else an InvalidMessage."""
    try:
        _validate(msg.value)
    except InvalidRequest as exc:
        raise InvalidMessage(str(exc), "InvalidMessage.InvalidRequest") from exc
    answered_by_http = any(n == ANSWERED_BY_HEADER and v == ANSWERED_BY_HTTP for n, v in msg.headers)
    return msg.value, _reply_tenant(msg), answered_by_http


def _reply_tenant(msg: Message) -> str | None:
    """The gateway's header, honoured only when it names the request's own tenant (the
    shared topic is written by the gateway and trusted first-party producers only)."""
    for name, value in msg.headers:
        if name == REPLY_HEADER:
            tenant = value.decode("utf-8", "replace") if value else ""
            return tenant if tenant == msg.value.get("tenant") and TENANT_NAME.fullmatch(tenant) else None
    return None


def _validate(request: dict[str, Any]) -> None:
    if not request["messages"]:
        raise InvalidRequest("messages is empty")
    roles = {m["role"] for m in request["messages"]}
    if not roles <= {"system", "user", "assistant", "tool"}:
        raise InvalidRequest(f"unknown message roles {sorted(roles - {'system', 'user', 'assistant', 'tool'})}")
    if request.get("max_tokens") is not None and request["max_tokens"] <= 0:
        raise InvalidRequest(f"max_tokens must be positive, got {request['max_tokens']}")
