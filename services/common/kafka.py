"""Kafka clients built from settings (aiokafka), and topic creation from the registry.

Producers are idempotent with ``acks=all``; consumers never auto-commit: the pipeline
commits offsets only after the write they cover.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context

from services.common.registry import SchemaRegistry, default_registry
from services.common.settings import KafkaSettings


def client_kwargs(k: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by producers, consumers and admin clients."""
    kw: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_context"] = create_ssl_context(
            cafile=str(k.ssl_cafile) if k.ssl_cafile else None,
            certfile=str(k.ssl_certfile) if k.ssl_certfile else None,
            keyfile=str(k.ssl_keyfile) if k.ssl_keyfile else None,
            password=k.ssl_key_password.get_secret_value() if k.ssl_key_password else None,
        )
    if k.security_protocol.startswith("SASL"):
        password = k.password()
        if not (k.sasl_mechanism and k.sasl_username and password):
            raise ValueError("SASL needs sasl_mechanism, sasl_username and sasl_password (or sasl_password_file)")
        kw["sasl_mechanism"] = k.sasl_mechanism
        kw["sasl_plain_username"] = k.sasl_username
        kw["sasl_plain_password"] = password
    return kw


def ssl_context(k: KafkaSettings):  # noqa: ANN201 - ssl.SSLContext | None
    """The TLS context of ``k`` (trusting ``ssl_cafile`` only, hostname checked), or None."""
    if k.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return client_kwargs(k)["ssl_context"]


def make_producer(k: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    opts: dict[str, Any] = {
        **client_kwargs(k),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "request_timeout_ms": 30000,
    }
    opts.update(overrides)
    return AIOKafkaProducer(**opts)


def make_consumer(k: KafkaSettings, group_id: str | None, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    opts: dict[str, Any] = {
        **client_kwargs(k),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "session_timeout_ms": 10000,
        "heartbeat_interval_ms": 1000,
        "max_poll_interval_ms": 300000,
    }
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, **opts)


async def ensure_topics(
    k: KafkaSettings,
    registry: SchemaRegistry | None = None,
    keys: list[str] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create every registry topic (or ``keys``) that does not exist yet, with the
    partitions, config and replication the registry gives (``k.replication`` decides
    whether a one-broker cluster gets 1 and 1). Idempotent. Returns the names created."""
    reg = registry or default_registry()
    wanted, factors = {}, {}
    for key in keys or list(reg.topics):
        spec = reg.topic(key)
        name = k.topic_prefix + spec.name
        factor, min_insync = k.replicas(spec.replication_factor, spec.min_insync_replicas)
        wanted[name] = (spec.partitions, {**spec.config, "min.insync.replicas": str(min_insync)})
        factors[name] = factor
    return await ensure_named_topics(k, wanted, factors, timeout_s)


async def ensure_named_topics(
    k: KafkaSettings,
    wanted: dict[str, tuple[int, dict[str, str]]],
    replication_factor: int | dict[str, int] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics named in ``wanted`` (name -> partitions, config) that do not
    exist yet; idempotent, safe beside a concurrent creator. Returns the names created.
    ``replication_factor`` (one for all, or per name) defaults to what ``k`` gives an
    internal topic (3, min.insync.replicas 2; 1 and 1 on a single broker)."""
    default_factor, default_min_insync = k.replicas()
    wanted = {
        name: (partitions, {"min.insync.replicas": str(default_min_insync), **config})
        for name, (partitions, config) in wanted.items()
    }

    def factor(name: str) -> int:
        if isinstance(replication_factor, dict):
            return replication_factor.get(name, default_factor)
        return default_factor if replication_factor is None else replication_factor

    admin = AIOKafkaAdminClient(**client_kwargs(k), request_timeout_ms=int(timeout_s * 1000))
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, partitions, factor(name), topic_configs=config)
            for name, (partitions, config) in wanted.items()
            if name not in existing
        ]
        for topic in new:  # one at a time: a concurrent creator must not fail the rest
            # aiokafka hands back the broker's per-topic errors rather than raising them
            response = await admin.create_topics([topic])
            for _name, code, *detail in response.topic_errors:
                if code == TopicAlreadyExistsError.errno:
                    break
                if code:
                    raise for_code(code)(f"cannot create topic {topic.name}: {detail[0] if detail else ''}")
            else:
                created.append(topic.name)
    finally:
        await admin.close()
    return created


class LagProbe:
    """Consumer-group lag as the broker sees it: per group and topic, the sum over
    partitions of (end offset - committed offset). Keeps one admin client and one
    consumer open between probes (for services that report their lag every few seconds).

    ``prefix=True`` matches every group whose name starts with one of ``groups``
    (the ingest service runs one group per topic: ``argus-ingest.<topic>``)."""

    def __init__(self, k: KafkaSettings) -> None:
        self.k = k
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> "LagProbe":
        self._admin = AIOKafkaAdminClient(**client_kwargs(self.k))
        self._consumer = make_consumer(self.k, None)
        await self._admin.start()
        await self._consumer.start()
        return self

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()
        self._admin = self._consumer = None

    async def __aenter__(self) -> "LagProbe":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def groups(self) -> list[str]:
        assert self._admin is not None, "LagProbe not started"
        return sorted(g[0] for g in await self._admin.list_consumer_groups())

    async def lag(self, groups: tuple[str, ...] | list[str] = (), prefix: bool = False) -> dict[str, dict[str, int]]:
        assert self._admin is not None and self._consumer is not None, "LagProbe not started"
        if not groups or prefix:
            every = await self.groups()
            names = [g for g in every if not groups or any(g == p or g.startswith(p + ".") for p in groups)]
        else:
            names = list(groups)
        out: dict[str, dict[str, int]] = {}
        for group in names:
            committed = await self._admin.list_consumer_group_offsets(group)
            offsets = {tp: m.offset for tp, m in committed.items() if m.offset >= 0}
            if not offsets:
                continue
            ends = await self._consumer.end_offsets(list(offsets))
            per_topic: dict[str, int] = {}
            for tp, c in offsets.items():
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(ends.get(tp, c) - c, 0)
            out[group] = per_topic
        return out


async def assigned_lag(consumer: Any, committed: dict[Any, int], metrics: Any = None) -> dict[str, int]:
    """Lag of the partitions a running consumer holds (``"topic[partition]"`` -> high
    watermark minus committed offset, what a new member would resume from): the
    readiness figure of the in-process consumers (pipelines, the inference bridge).
    Uses the consumer's last fetch metadata and asks the broker only for what it does
    not know yet, so a readiness probe stays cheap; ``committed`` is the caller's cache
    of its own commits (filled here from the broker for partitions it lacks).
    :class:`LagProbe` is the same figure seen from outside, per consumer group."""
    parts = sorted(consumer.assignment(), key=lambda t: (t.topic, t.partition))
    unknown = [tp for tp in parts if consumer.highwater(tp) is None]
    ends = await consumer.end_offsets(unknown) if unknown else {}
    out: dict[str, int] = {}
    for tp in parts:
        if tp not in committed:
            committed[tp] = (await consumer.committed(tp)) or 0
        high = ends[tp] if tp in ends else consumer.highwater(tp)
        lag = max(0, high - committed[tp])
        out[f"{tp.topic}[{tp.partition}]"] = lag
        if metrics is not None:
            metrics.set("argus_consumer_lag", lag, topic=tp.topic, partition=str(tp.partition))
    return out


class GroupLagReporter:
    """A service's own consumer-group lag, refreshed by :meth:`refresh` (every few
    seconds): ``lag`` (topic -> lag, what readiness reports) and the
    ``argus_consumer_lag`` gauge with ``partition="all"``. A broker error is logged, the
    last figures are kept and the clients are reopened on the next refresh."""

    def __init__(self, k: KafkaSettings, group: str, metrics: Any, log: Any) -> None:
        self.group, self.metrics, self.log = group, metrics, log
        self.probe = LagProbe(k)
        self.lag: dict[str, int] = {}
        self._started = False

    async def refresh(self) -> dict[str, int]:
        from aiokafka.errors import KafkaError

        try:
            if not self._started:
                await self.probe.start()
                self._started = True
            per_topic = (await self.probe.lag([self.group])).get(self.group, {})
        except (KafkaError, OSError) as exc:
            self.log.warning("lag_unavailable", group=self.group, error=str(exc))
            await self.close()
            return self.lag
        self.lag.clear()
        self.lag.update(per_topic)
        for topic, n in per_topic.items():
            self.metrics.set("argus_consumer_lag", n, topic=topic, partition="all")
        return self.lag

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self.probe.close()


async def group_lag(
    k: KafkaSettings, groups: tuple[str, ...] | list[str] = (), prefix: bool = False
) -> dict[str, dict[str, int]]:
    """Lag of consumer groups (every group when ``groups`` is empty): group -> topic ->
    sum over partitions of (end offset - committed offset). For lag alerts and status."""
    async with LagProbe(k) as probe:
        return await probe.lag(groups, prefix)
